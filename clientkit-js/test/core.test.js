// The sans-I/O session core with fake inputs: no socket, no timer; time is an argument.
import { test } from "node:test";
import assert from "node:assert/strict";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

import { SessionCore, State } from "../src/core.js";
import { canonical, decodeTyped, encode } from "../src/msgpack.js";

const sends = (out) => out.filter((o) => o.type === "send").map((o) => o.msg);
const of = (out, type) => out.filter((o) => o.type === type);

function online(core, now = 1000, head = 0) {
  core.connect(now);
  core.connected(now);
  return core.receive({ t: "welcome", session: "s", tenant: "acme", user: core.user, head }, now);
}

let pos = 0;
function patch(stream, op, client, { wall = 1_700_000_000_000, vc = { [client]: 1 }, lww = null, manual = null, merge = null } = {}) {
  pos += 1;
  const hlc = `${wall.toString(16).padStart(12, "0")}-00000000-${client}`;
  const data = { op, client, user: client, hlc, vc, base: 0, outcome: { kind: "applied" } };
  if (lww) data.lww = lww;
  if (manual) data.manual = manual;
  if (merge) data.merge = merge;
  return { type: "record.patched", stream, position: pos, data, clock: { vc, hlc } };
}

test("handshake: hello with the resume position, then sub from it; ops only once online", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1", position: 7 });
  assert.deepEqual(of(core.connect(0), "connect"), [{ type: "connect", attempt: 1 }]);
  assert.deepEqual(sends(core.connected(0)), [{ t: "hello", client: "c1", resume: { main: 7 } }]);
  assert.deepEqual(sends(core.set("rec/t/1", { a: 1 }, 1)), [], "not sent while connecting");
  assert.deepEqual(core.get("rec/t/1"), { a: 1 }, "applied locally at once");
  const out = core.receive({ t: "welcome", session: "s", tenant: "acme", user: "alice", head: 9 }, 2);
  const [sub, ops] = sends(out);
  assert.deepEqual(sub, { t: "sub", id: "main", prefixes: ["rec/"], after: 7 });
  assert.equal(ops.t, "ops");
  assert.deepEqual(ops.ops.map((o) => [o.op, o.kind, o.stream, o.vc, o.set]), [["c1.1", "op", "rec/t/1", { c1: 1 }, { a: 1 }]]);
  assert.equal(core.state, State.ONLINE);
  assert.deepEqual(of(out, "state")[0], { type: "state", old: "connecting", new: "online" });
});

test("resume from a cursor: events at or below it are skipped, each batch is acked, a reconnect resumes", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1" });
  online(core);
  pos = 0;
  const e1 = patch("rec/t/1", "x.1", "x", { lww: { a: 1 } });
  const e2 = patch("rec/t/1", "x.2", "x", { lww: { a: 2 }, vc: { x: 2 } });
  let out = core.receive({ t: "events", sub: "main", events: [e1, e2], next: 2, head: 5 }, 10);
  assert.equal(of(out, "events")[0].events.length, 2);
  assert.deepEqual(sends(out), [{ t: "ack", sub: "main", upto: 2 }]);
  assert.deepEqual(core.get("rec/t/1"), { a: 2 });
  out = core.receive({ t: "events", sub: "main", events: [e1, e2], next: 2 }, 11); // sent again
  assert.deepEqual(of(out, "events"), [], "applied once");
  // filtered-out events moved the cursor past the batch
  core.receive({ t: "events", sub: "main", events: [], next: 4, head: 5 }, 12);
  assert.equal(core.position, 4);
  core.disconnected(13, "gone");
  assert.equal(core.state, State.OFFLINE);
  core.connect(14);
  assert.deepEqual(sends(core.connected(14)), [{ t: "hello", client: "c1", resume: { main: 4 } }]);
  assert.deepEqual(sends(core.receive({ t: "welcome", session: "s2", tenant: "acme", user: "alice", head: 5 }, 15))[0].after, 4);
});

test("ops: batches, acks, resending unanswered ops with the same ids after a disconnect, rejections", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1", batchSize: 2, maxInflight: 1 });
  for (let i = 0; i < 3; i++) core.set(`rec/t/${i}`, { n: i }, 100 + i);
  let out = online(core, 200);
  let [b1] = sends(out).filter((m) => m.t === "ops");
  assert.deepEqual(b1.ops.map((o) => o.op), ["c1.1", "c1.2"]);
  core.disconnected(201, "lost"); // no answer
  out = online(core, 500);
  const again = sends(out).filter((m) => m.t === "ops")[0];
  assert.deepEqual(again.ops.map((o) => o.op), ["c1.1", "c1.2"], "the same idempotency keys go again");
  out = core.receive({ t: "opacks", id: again.id, results: [{ op: "c1.1", kind: "duplicate" }, { op: "c1.2", kind: "rejected", reason: "invalid_value" }] }, 501);
  assert.deepEqual(of(out, "opResult").map((r) => [r.opId, r.kind]), [["c1.1", "duplicate"], ["c1.2", "rejected"]]);
  assert.deepEqual(core.get("rec/t/1"), {}, "a rejected op leaves the overlay");
  assert.deepEqual(core.get("rec/t/0"), { n: 0 }, "an accepted op stays until its event arrives");
  const b2 = sends(out).filter((m) => m.t === "ops")[0];
  assert.deepEqual(b2.ops.map((o) => o.op), ["c1.3"]);
  core.receive({ t: "opacks", id: b2.id, results: [{ op: "c1.3", kind: "applied" }] }, 502);
  assert.equal(core.pendingOps, 0);
});

test("clock skew: the op is stamped again from the server's clock, once", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1" });
  const now = 10_000_000;
  core.set("rec/t/1", { a: 1 }, now);
  const b = sends(online(core, now)).find((m) => m.t === "ops");
  const serverMs = now - 3_600_000;
  const out = core.receive({ t: "opacks", id: b.id, results: [{ op: "c1.1", kind: "rejected", reason: "clock_skew", server_ms: serverMs }] }, now);
  assert.deepEqual(of(out, "opResult"), [], "not surfaced: it goes again");
  core.tick(now + 31_000); // the unanswered batch times out and is sent again
  const resent = sends(core.tick(now + 31_001)).concat(sends(core.tick(now + 62_000))).find((m) => m.t === "ops");
  const stamped = core.queue.peek(0, 1)[0].op;
  assert.equal(parseInt(stamped.hlc.slice(0, 12), 16) < now, true, "stamped from the server's time");
  assert.ok(resent === undefined || resent.ops[0].hlc === stamped.hlc);
  const again = core.receive({ t: "opacks", id: "bX", results: [{ op: "c1.1", kind: "rejected", reason: "clock_skew", server_ms: serverMs }] }, now);
  assert.deepEqual(of(again, "opResult").map((r) => r.kind), ["rejected"], "a second skew is surfaced");
});

test("conflicts are surfaced once, and resolve sends a resolve op whose clock covers every version", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1" });
  online(core);
  pos = 0;
  const a = patch("rec/notes/1", "x.1", "x", { manual: { title: "from x" } });
  const b = patch("rec/notes/1", "y.1", "y", { manual: { title: "from y" }, wall: 1_700_000_000_001 });
  let out = core.receive({ t: "events", sub: "main", events: [a, b], next: 2 }, 5);
  const [found] = of(out, "conflict");
  assert.equal(found.conflict.field, "title");
  assert.deepEqual(found.conflict.versions.map((v) => [v.stamp.op, v.value]), [["x.1", "from x"], ["y.1", "from y"]]);
  out = core.receive({ t: "events", sub: "main", events: [patch("rec/notes/1", "x.2", "x", { lww: { other: 1 }, vc: { x: 2 } })], next: 3 }, 6);
  assert.deepEqual(of(out, "conflict"), [], "reported once");
  out = core.resolve(found.conflict.id, "y.1", 7);
  const op = sends(out).find((m) => m.t === "ops").ops[0];
  assert.deepEqual({ kind: op.kind, conflict: op.conflict, field: op.field, choice: op.choice, value: op.value, deleted: op.deleted },
    { kind: "resolve", conflict: found.conflict.id, field: "title", choice: "y.1", value: "from y", deleted: false });
  assert.deepEqual(op.vc, { c1: 1, x: 2, y: 1 });
  assert.equal(core.get("rec/notes/1").title, "from y", "the decision shows at once");
  const custom = sends(core.resolve(found.conflict.id, "custom", 8, { custom: true, value: "mine" })).find((m) => m.t === "ops");
  assert.deepEqual([custom.ops[0].choice, custom.ops[0].value], ["custom", "mine"]);
  assert.throws(() => core.resolve("cf_nope", "y.1", 9), /no open conflict/);
});

function chunk(position, content, size = 50) {
  const blob = encode([position, content]);
  const checksum = bytesToHex(sha256(canonical(decodeTyped(blob))));
  const total = Math.ceil(blob.length / size);
  return Array.from({ length: total }, (_, i) => ({ t: "snapshot", id: "", index: i, total, checksum, data: blob.slice(i * size, (i + 1) * size), position }));
}

test("too far behind: refresh, a verified snapshot replaces the state, then sub after its position", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1" });
  core.set("rec/t/9", { mine: 1 }, 1);
  online(core);
  let out = core.receive({ t: "refresh", sub: "main", head: 50_000, reason: "too_far_behind" }, 2);
  assert.equal(core.state, State.RESYNCING);
  assert.deepEqual(sends(out), [{ t: "snap", id: "snap1", prefixes: ["rec/"] }]);
  const content = { "rec/t/1": { kind: "record", version: 4, values: { a: 1 }, conflicts: [],
    state: { vc: { x: 4 }, fields: { a: ["lww", ["x.4", "x", "x", "000000000009-00000000-x", { x: 4 }], 1, false, { x: 4 }] } } } };
  const good = chunk(49_000, content);
  // A corrupted one first: refused, asked again.
  const bad = chunk(49_000, content).map((c) => ({ ...c, id: "snap1", checksum: "0".repeat(64) }));
  let res = [];
  for (const c of bad) res = core.receive(c, 3);
  assert.equal(of(res, "snapshotCorrupt").length, 1);
  assert.deepEqual(sends(res), [{ t: "snap", id: "snap2", prefixes: ["rec/"] }]);
  for (const c of good) res = core.receive({ ...c, id: "snap2" }, 4);
  assert.deepEqual(of(res, "snapshotInstalled"), [{ type: "snapshotInstalled", position: 49_000, droppedOps: 0 }]);
  assert.equal(core.state, State.ONLINE);
  assert.deepEqual(sends(res)[0], { t: "sub", id: "main", prefixes: ["rec/"], after: 49_000 });
  assert.deepEqual(core.get("rec/t/1"), { a: 1 });
  assert.equal(core.replica.version("rec/t/1"), 4);
  assert.deepEqual(core.get("rec/t/9"), { mine: 1 }, "local ops are kept");
  out = core.receive({ t: "events", sub: "main", events: [{ ...patch("rec/t/1", "x.5", "x", { lww: { a: 2 }, vc: { x: 5 } }), position: 49_001 }], next: 49_001 }, 5);
  assert.deepEqual(core.get("rec/t/1"), { a: 2 }, "events fold on the installed state");
  assert.equal(core.replica.version("rec/t/1"), 5);
});

test("deadlines: handshake timeout, heartbeat, stale connection, a failed subscription, backoff with jitter", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1", random: () => 0.5 });
  core.connect(0);
  core.connected(0);
  assert.equal(core.nextDeadline(), 10_000);
  let out = core.tick(10_000);
  assert.deepEqual(of(out, "disconnect"), [{ type: "disconnect", reason: "handshake_timeout" }]);
  assert.equal(core.state, State.OFFLINE);
  const retry = core.nextDeadline();
  assert.ok(retry > 10_000 && retry <= 10_500, `backoff ${retry}`);
  assert.deepEqual(core.tick(retry - 1), []);
  assert.equal(of(core.tick(retry), "connect").length, 1);
  core.connected(retry);
  core.receive({ t: "welcome", session: "s", tenant: "acme", user: "alice", head: 0, heartbeat_s: 5 }, retry);
  assert.deepEqual(sends(core.tick(retry + 5000)), [{ t: "ping", id: 1 }]);
  core.receive({ t: "error", code: "store_unavailable", ref: "main" }, retry + 5001);
  assert.deepEqual(sends(core.tick(retry + 5100)), []);
  assert.deepEqual(sends(core.tick(retry + 5300)).filter((m) => m.t === "sub").length, 1, "subscribes again after a backoff");
  out = core.tick(retry + 5300 + 90_001);
  assert.deepEqual(of(out, "disconnect"), [{ type: "disconnect", reason: "stale" }]);
});

test("presence and rooms are re-joined on welcome; auth goes only on a live connection", () => {
  const core = new SessionCore({ user: "alice", clientId: "c1" });
  assert.deepEqual(core.join("r1"), []);
  core.setPresence("r1", { typing: true });
  assert.deepEqual(core.auth("tok", "a1"), []);
  const out = sends(online(core));
  assert.deepEqual(out.slice(1, 3), [{ t: "join", room: "r1" }, { t: "presence", room: "r1", state: { typing: true } }]);
  assert.deepEqual(sends(core.auth("tok", "a1")), [{ t: "auth", token: "tok", id: "a1" }]);
  core.receive({ t: "presence", room: "r1", user: "bob", state: { cursor: 3 } }, 2);
  assert.deepEqual(core.othersIn("r1"), { bob: { cursor: 3 } });
  core.receive({ t: "presence", room: "r1", user: "bob", event: "left" }, 3);
  assert.deepEqual(core.othersIn("r1"), {});
});
