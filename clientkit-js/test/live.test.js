// Against a real `syncline serve` (SQLite file) started here: sync, resume, the IndexedDB
// queue across a reload with idempotent resubmission, polling fallback, snapshot refresh,
// in-band token refresh; and manual conflicts resolved from the kit (tests/clientkit's
// server, whose `notes.title` field is manual).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { IDBFactory } from "fake-indexeddb";
import { WebSocket } from "ws";

import { IndexedDbStore, MemoryStore, SynclineClient, tokenExpiry } from "../src/index.js";
import { freePort, mintToken, Server, waitFor } from "./support.js";

let server;
let notes;
before(async () => {
  [server, notes] = await Promise.all([
    new Server({ env: { SYNCLINE_MAX_BEHIND: "50" } }).start(),
    new Server({ script: "tests/clientkit/ck_server.py" }).start(),
  ]);
});
after(async () => {
  await Promise.all([server?.stop(), notes?.stop()]);
});

const opened = [];
async function client(srv, user, tenant, extra = {}) {
  const c = await SynclineClient.open({ url: srv.url, token: extra.token || mintToken(user, { tenant }), user, WebSocket,
    loadConfig: false, ...extra });
  opened.push(c);
  return c;
}
after(async () => {
  for (const c of opened) if (!c.closing) await c.close();
});

test("online: a write syncs and reaches another client; a reconnect resumes from the cursor", async () => {
  const a = await client(server, "alice", "t1");
  const b = await client(server, "bob", "t1");
  a.start();
  b.start();
  await a.set("rec/tasks/1", { title: "write docs", done: false });
  await a.waitSynced();
  await b.waitFor(() => b.get("rec/tasks/1").title === "write docs");
  assert.equal(a.transport, "ws");
  const before = b.stats.events;
  b.goOffline();
  await a.set("rec/tasks/1", { done: true });
  await a.waitSynced();
  b.goOnline();
  await b.waitFor(() => b.get("rec/tasks/1").done === true);
  assert.equal(b.stats.events - before, 1, "only the missed event is sent again");
  const r = await server.get("/v1/records/tasks/1", mintToken("carol", { tenant: "t1" }));
  assert.deepEqual(r.body.values, { title: "write docs", done: true });
});

test("offline: ops queue in IndexedDB, survive a reload, and drain once; a lost ack is answered duplicate", async () => {
  const idb = new IDBFactory();
  const tok = mintToken("alice", { tenant: "t2" });
  let a = await client(server, "alice", "t2", { token: tok, store: new IndexedDbStore("alice", { indexedDB: idb }) });
  // never started: offline from the beginning
  await a.set("rec/tasks/1", { title: "offline 1" });
  await a.set("rec/tasks/2", { title: "offline 2" });
  await a.set("rec/tasks/1", { done: true });
  const queued = a.pendingOps();
  assert.equal(queued.length, 3);
  await a.close();
  // The first op reached the server before (its ack was lost): the server has it already.
  const pre = await server.post("/v1/ops", tok, { ops: [queued[0]] });
  assert.equal(pre.body.results[0].kind, "applied");

  a = await client(server, "alice", "t2", { token: tok, store: new IndexedDbStore("alice", { indexedDB: idb }) }); // reload
  assert.equal(a.pending, 3, "the queue survived the reload");
  assert.deepEqual(a.get("rec/tasks/1"), { title: "offline 1", done: true }, "pending ops show at once");
  const kinds = [];
  a.on("opResult", ({ kind }) => kinds.push(kind));
  a.start();
  await a.waitSynced();
  assert.deepEqual(kinds, ["duplicate", "applied", "applied"]);
  const r = await server.get("/v1/records/tasks/1", tok);
  assert.deepEqual(r.body.values, { title: "offline 1", done: true });
  const log = await server.get("/v1/streams/rec/tasks/1", tok);
  assert.deepEqual(log.body.events.map((e) => e.data.op), [queued[0].op, queued[2].op], "the resubmitted op was applied once");
  await a.close();
  a = await client(server, "alice", "t2", { token: tok, store: new IndexedDbStore("alice", { indexedDB: idb }) });
  assert.equal(a.pending, 0);
  assert.ok(a.position > 0, "the replica and its position were saved");
  assert.deepEqual(a.get("rec/tasks/2"), { title: "offline 2" });
});

test("fallback: with the WebSocket unreachable the client polls, receives a change made elsewhere and drains its ops", async () => {
  const dead = `ws://127.0.0.1:${await freePort()}/v1/ws`;
  const p = await client(server, "pat", "t3", { transport: { wsUrl: dead, maxPollIntervalMs: 200, openTimeoutMs: 1000 }, backoffBaseMs: 50 });
  const w = await client(server, "wes", "t3");
  p.start();
  w.start();
  await p.waitFor(() => p.transport === "poll", 15_000);
  assert.ok(p.stats.pollConnects >= 1 && p.stats.wsConnects === 0);
  await w.set("rec/tasks/9", { title: "from the websocket" });
  await p.waitFor(() => p.get("rec/tasks/9").title === "from the websocket");
  await p.set("rec/tasks/9", { done: true });
  await p.waitSynced();
  await w.waitFor(() => w.get("rec/tasks/9").done === true);
  assert.equal(p.connector.poll.maxIntervalMs, 200);
});

test("too far behind: the server says refresh, a verified snapshot replaces the state, events follow", async () => {
  const a = await client(server, "alice", "t4");
  a.start();
  for (let i = 0; i < 80; i++) a.set(`rec/items/${i % 20}`, { n: i, tags: [i] });
  await a.waitSynced(20_000);
  const b = await client(server, "bob", "t4");
  b.start();
  await b.waitFor(() => b.stats.snapshots === 1 && b.status === "online", 20_000);
  assert.equal(b.stats.events, 0, "no event replayed: the snapshot brought the state");
  for (let i = 0; i < 20; i++) assert.deepEqual(b.get(`rec/items/${i}`), a.get(`rec/items/${i}`));
  assert.equal(b.core.replica.version("rec/items/3"), 4);
  await a.set("rec/items/3", { n: -1 });
  await b.waitFor(() => b.get("rec/items/3").n === -1);
  assert.equal(b.core.replica.version("rec/items/3"), 5, "events fold on the installed state");
});

test("token refresh in-band: a short token is replaced before it expires and the connection lives on", async () => {
  const next = mintToken("alice", { tenant: "t5", ttl: 3600 });
  const first = mintToken("alice", { tenant: "t5", ttl: 8 });
  // (the new token is handed out once the connection is up, so the refresh is in-band
  // however slow the machine is)
  const a = await client(server, "alice", "t5", { token: first, getToken: () => (a.status === "online" ? next : first) });
  const inBand = [];
  a.on("token", (t) => t.inBand && inBand.push(t.exp));
  a.start();
  await a.waitFor(() => inBand.length === 1, 10_000);
  assert.equal(inBand[0], tokenExpiry(next), "the server took the new token (authed.exp)");
  const oldExp = tokenExpiry(first);
  await waitFor(() => Date.now() / 1000 > oldExp + 1.5, 10_000, "the first token's expiry");
  await a.set("rec/tasks/1", { alive: true });
  await a.waitSynced();
  assert.equal(a.stats.connects, 1, "no reconnection: the session outlived its first token");
});

test("the browser's offline and online events drop the connection and bring it back", async () => {
  const net = new EventTarget();
  let up = false;
  const a = await client(server, "alice", "t9", { network: { target: net, isOnline: () => up } });
  a.start();
  await a.set("rec/tasks/1", { n: 1 });
  assert.equal(a.stats.connects, 0, "no attempt while the browser is offline");
  up = true;
  net.dispatchEvent(new Event("online"));
  await a.waitSynced();
  up = false;
  net.dispatchEvent(new Event("offline"));
  await a.waitFor(() => a.status === "offline");
  await a.set("rec/tasks/1", { n: 2 });
  assert.equal(a.pending, 1);
  up = true;
  net.dispatchEvent(new Event("online"));
  await a.waitSynced();
  assert.equal(a.stats.connects, 2);
  assert.deepEqual(a.get("rec/tasks/1"), { n: 2 });
});

test("an expired token is replaced from getToken before connecting", async () => {
  const expired = mintToken("alice", { tenant: "t8", ttl: 1 });
  await waitFor(() => Date.now() / 1000 > tokenExpiry(expired) + 1, 10_000, "the token to expire");
  const fresh = mintToken("alice", { tenant: "t8", ttl: 3600 });
  const a = await client(server, "alice", "t8", { token: expired, getToken: async () => fresh });
  a.start();
  await a.set("rec/tasks/1", { ok: true });
  await a.waitSynced();
  assert.equal(a.token, fresh);
  assert.equal(a.stats.connects, 1, "no refused attempt first");
});

test("manual conflict: both versions reach both clients; one resolves, both show the decision", async () => {
  const a = await client(notes, "alice", "t6");
  const b = await client(notes, "bob", "t6");
  const seen = { a: [], b: [] };
  a.on("conflict", ({ conflict }) => seen.a.push(conflict));
  b.on("conflict", ({ conflict }) => seen.b.push(conflict));
  // both edit offline, concurrently
  await a.set("rec/notes/1", { title: "alice's title" });
  await b.set("rec/notes/1", { title: "bob's title" });
  a.start();
  await a.waitSynced();
  b.start();
  await b.waitSynced();
  await a.waitFor(() => seen.a.length === 1);
  await b.waitFor(() => seen.b.length === 1);
  const c = seen.a[0];
  assert.equal(c.id, seen.b[0].id);
  assert.deepEqual(c.versions.map((v) => v.value).sort(), ["alice's title", "bob's title"]);
  const tok = mintToken("carol", { tenant: "t6" });
  assert.deepEqual((await notes.get("/v1/conflicts", tok)).body.conflicts.map((x) => x.conflict), [c.id]);
  const bobs = c.versions.find((v) => v.stamp.user === "bob");
  await a.resolve(c.id, bobs.stamp.op);
  await a.waitSynced();
  await b.waitFor(() => b.conflicts().length === 0 && b.get("rec/notes/1").title === "bob's title");
  assert.deepEqual(a.conflicts(), []);
  assert.equal(a.get("rec/notes/1").title, "bob's title");
  assert.deepEqual((await notes.get("/v1/conflicts", tok)).body.conflicts, []);

  // A client that does not follow the record resolves a conflict listed by GET /v1/conflicts.
  a.goOffline();
  b.goOffline();
  await a.set("rec/notes/2", { title: "A" });
  await b.set("rec/notes/2", { title: "B" });
  a.goOnline();
  b.goOnline();
  await a.waitFor(() => a.conflicts("rec/notes/2").length === 1);
  const carol = await client(notes, "carol", "t6", { prefixes: ["rec/elsewhere/"] });
  carol.start();
  const [listed] = await carol.fetchConflicts("rec/notes/2");
  assert.deepEqual(listed.versions.map((v) => v.value).sort(), ["A", "B"]);
  assert.throws(() => carol.resolve(listed.id, "nope.1", { conflict: listed }), (e) => e.code === "unknown_conflict");
  assert.equal(carol.pending, 0);
  await carol.resolve(listed.id, { value: "C" }, { conflict: listed });
  await carol.waitFor(() => carol.pending === 0 && carol.core.replica.pending.size === 0);
  await a.waitFor(() => a.conflicts().length === 0 && a.get("rec/notes/2").title === "C");
  await b.waitFor(() => b.conflicts().length === 0 && b.get("rec/notes/2").title === "C");
  assert.deepEqual(await carol.fetchConflicts(), []);
});

test("the resolution rules are taken from the config option for the overlay of merge fields", async () => {
  const a = await client(notes, "alice", "t7", { config: { collections: { notes: { fields: { likes: "counter" } } } } });
  a.start();
  await a.set("rec/notes/1", { likes: 2 });
  await a.set("rec/notes/1", { likes: 3 });
  assert.equal(a.get("rec/notes/1").likes, 5, "pending increments add up");
  await a.waitSynced();
  assert.equal(a.get("rec/notes/1").likes, 5, "and the server agrees");
  assert.ok(a.core.replica.config !== null);
  assert.equal(new MemoryStore().writes, 0);
});

test("the rules the server publishes (GET /v1/config/resolution) are what the kit reads", async () => {
  // `syncline serve` makes board.title manual by default (SYNCLINE_RECORDS_MANUAL_FIELDS).
  const a = await client(server, "alice", "t8", { loadConfig: true });
  a.start();
  await a.waitSynced();
  const config = a.core.replica.config;
  assert.ok(config !== null, "rules loaded");
  assert.deepEqual(config.fieldRule("board", "title"), { strategy: "manual", merge: null });
  assert.deepEqual(config.fieldRule("board", "done"), { strategy: "lww", merge: null });
});
