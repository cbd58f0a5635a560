// The op queue on IndexedDB (fake-indexeddb) and in memory: order, idempotency keys,
// acks, meta in the same transaction, the replica with its position, and surviving a
// "reload" (a new queue over the same database).
import { test } from "node:test";
import assert from "node:assert/strict";
import { IDBFactory } from "fake-indexeddb";

import { IndexedDbStore, MemoryStore, OpQueue, QueueFull } from "../src/queue.js";
import { SessionCore } from "../src/core.js";

const op = (id, stream = "rec/t/1", extra = {}) => ({ kind: "op", op: id, client: "c1", user: "alice", stream, vc: { c1: 1 }, hlc: "000000000001-00000000-c1", set: { x: id }, delete: [], base: 0, ...extra });

for (const [name, makeStore] of [
  ["IndexedDB", (idb) => new IndexedDbStore("q-test", { indexedDB: idb })],
  ["memory", (_idb, shared) => shared],
]) {
  test(`${name}: ops, meta and replica survive a reload; acks and clear are persisted`, async () => {
    const idb = new IDBFactory();
    const shared = new MemoryStore();
    let q = await OpQueue.open(makeStore(idb, shared));
    q.append([op("c1.1"), op("c1.2")], { n: 2, hlc: "h2" });
    q.append([op("c1.3")], { n: 3 });
    q.append([op("c1.2")]); // the same idempotency key again: queued once
    q.saveReplica(17, { "rec/t/1": [3, { vc: { c1: 3 }, fields: {} }] });
    assert.equal(q.size, 3);
    await q.close();

    q = await OpQueue.open(makeStore(idb, shared)); // the page reloads
    assert.deepEqual(q.peek(0, 10).map((x) => x.op.op), ["c1.1", "c1.2", "c1.3"]);
    assert.deepEqual(q.peek(q.peek(0, 1)[0].seq, 10).map((x) => x.op.op), ["c1.2", "c1.3"]);
    assert.equal(q.getMeta("n"), 3);
    assert.equal(q.getMeta("hlc"), "h2");
    assert.deepEqual(q.loadReplica(), { position: 17, records: { "rec/t/1": [3, { vc: { c1: 3 }, fields: {} }] } });
    assert.equal(q.ack(["c1.1", "nope"]), 1);
    q.append([op("c1.4")], { n: 4 });
    await q.close();

    q = await OpQueue.open(makeStore(idb, shared));
    assert.deepEqual(q.peek(0, 10).map((x) => x.op.op), ["c1.2", "c1.3", "c1.4"]);
    assert.ok(q.peek(0, 10)[2].seq > q.peek(0, 10)[1].seq, "seq keeps growing after a reload");
    assert.equal(q.clear(), 3);
    await q.close();
    q = await OpQueue.open(makeStore(idb, shared));
    assert.equal(q.size, 0);
    assert.equal(q.getMeta("n"), 4, "meta outlives the ops");
    await q.close();
  });
}

test("QueueFull: beyond the limit nothing is queued", async () => {
  const q = await OpQueue.open(new MemoryStore(), { limit: 2 });
  q.append([op("a")]);
  assert.throws(() => q.append([op("b"), op("c")]), (e) => e instanceof QueueFull && e.code === "queue_full");
  assert.equal(q.size, 1);
});

test("a browser restart: the core reloads its client id, op counter, pending ops and clocks from IndexedDB", async () => {
  const idb = new IDBFactory();
  let q = await OpQueue.open(new IndexedDbStore("app", { indexedDB: idb }));
  let core = new SessionCore({ user: "alice", queue: q });
  const client = core.clientId;
  core.set("rec/tasks/1", { title: "a" }, 1000);
  core.set("rec/tasks/1", { done: true }, 1001);
  await q.close();

  q = await OpQueue.open(new IndexedDbStore("app", { indexedDB: idb }));
  core = new SessionCore({ user: "alice", queue: q });
  assert.equal(core.clientId, client);
  assert.deepEqual(core.get("rec/tasks/1"), { title: "a", done: true }, "pending ops are readable again");
  core.set("rec/tasks/1", { title: "b" }, 1002);
  const ops = q.peek(0, 10).map((x) => x.op);
  assert.deepEqual(ops.map((o) => o.op), [`${client}.1`, `${client}.2`, `${client}.3`], "no op id is reused");
  assert.deepEqual(ops[2].vc, { [client]: 3 }, "no clock tick is reused");
  assert.ok(ops[2].hlc > ops[1].hlc);
  assert.throws(() => new SessionCore({ user: "alice", queue: q, clientId: "other" }), /belongs to client/);
  await q.close();
});

test("many appends in one turn are one transaction", async () => {
  const store = new MemoryStore();
  const q = await OpQueue.open(store, { limit: 20_000 });
  for (let i = 0; i < 10_000; i++) q.append([op(`c1.${i}`)], { n: i });
  await q.flush();
  assert.equal(store.writes, 1);
  assert.equal(store.ops.size, 10_000);
  q.ack(Array.from({ length: 5000 }, (_, i) => `c1.${i}`));
  assert.equal(q.peek(0, 1)[0].op.op, "c1.5000");
  await q.flush();
  assert.equal(store.ops.size, 5000);
});
