/**
 * The offline op queue: ops in the order they were made, each with its idempotency key
 * (its op id), persisted through a storage backend (clientkit/queue.py's design).
 *
 * Rules (as the Python kit's):
 * - ops keep the order they were appended in (`seq` increases);
 * - an op leaves the queue only through `ack` (the server answered for it) or `clear`;
 * - `append` throws QueueFull when `limit` ops are queued, and queues nothing;
 * - a small key/value `meta` area (client id, op counter, last HLC, per-record clocks)
 *   is written in the same transaction as the ops it goes with, so a reload never reuses
 *   an op id or a clock tick;
 * - the replica's confirmed records are saved with the log position they are at, in one
 *   transaction, so a reload resumes from there.
 *
 * The session core is synchronous, IndexedDB is not: `OpQueue` holds the queue in memory
 * (loaded once by `OpQueue.open`) and writes every change behind, in order, to its
 * store. Changes made in one turn of the event loop go in one transaction. `flush()`
 * resolves once everything changed so far is durable; `client.set()` returns that
 * promise, so a page may await it before telling the user "saved".
 *
 * Storage backends implement two async methods:
 *   load() -> {ops: [{seq, op}] (any order), meta: {}, replica: {position, records}}
 *   write({clear, del: [op id], put: [{seq, op}], meta: {}, replica: {position, records, reset} | null})
 *     (applied in that order, in one transaction)
 * and close(). `MemoryStore` and `IndexedDbStore` are the two here.
 */

export const DEFAULT_LIMIT = 10_000;

export class QueueFull extends Error {
  constructor(size, limit, adding) {
    super(`the offline queue holds ${size} of ${limit} ops; cannot add ${adding}`);
    this.code = "queue_full";
    this.size = size;
    this.limit = limit;
  }
}

function emptyBatch() {
  return { clear: false, del: new Set(), put: new Map(), meta: {}, replica: null };
}

export class OpQueue {
  /** Load the queue from `store` (a MemoryStore when omitted). */
  static async open(store = new MemoryStore(), { limit = DEFAULT_LIMIT } = {}) {
    const loaded = await store.load();
    return new OpQueue(store, loaded, limit);
  }

  constructor(store, loaded = { ops: [], meta: {}, replica: { position: 0, records: {} } }, limit = DEFAULT_LIMIT) {
    this.store = store;
    this.limit = limit;
    const ops = [...loaded.ops].sort((a, b) => a.seq - b.seq);
    this.items = ops; // [{seq, op}] in seq order
    this.byId = new Map(ops.map((q) => [q.op.op, q]));
    this.nextSeq = ops.length ? ops[ops.length - 1].seq + 1 : 1;
    this.meta = { ...loaded.meta };
    this.replica = { position: loaded.replica?.position || 0, records: { ...(loaded.replica?.records || {}) } };
    this.batch = emptyBatch();
    this.dirty = false;
    this.scheduled = false;
    this.chain = Promise.resolve();
    this.writeError = null;
    this.onWriteError = null;
    this.head = 0; // index of the first live item (acks come from the front)
  }

  get size() {
    return this.byId.size;
  }

  /** Queue wire ops (`{kind, op, client, ...}`) and write `meta` with them. */
  append(ops, meta = null) {
    if (this.byId.size + ops.length > this.limit) throw new QueueFull(this.byId.size, this.limit, ops.length);
    const out = [];
    for (const op of ops) {
      const had = this.byId.get(op.op);
      if (had) {
        out.push(had);
        continue;
      }
      const q = { seq: this.nextSeq++, op };
      this.items.push(q);
      this.byId.set(op.op, q);
      this.batch.del.delete(op.op);
      this.batch.put.set(op.op, q);
      out.push(q);
    }
    if (meta) this.setMeta(meta);
    this.touch();
    return out;
  }

  /** Up to `limit` queued ops with seq > `afterSeq`, in order. */
  peek(afterSeq = 0, limit = 500) {
    const items = this.items;
    // binary search for the first seq > afterSeq (items are sorted by seq)
    let lo = this.head;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].seq <= afterSeq) lo = mid + 1;
      else hi = mid;
    }
    const out = [];
    for (let i = lo; i < items.length && out.length < limit; i++) {
      if (this.byId.get(items[i].op.op) === items[i]) out.push(items[i]);
    }
    return out;
  }

  /** Remove answered ops; returns how many were queued. */
  ack(opIds) {
    let n = 0;
    for (const id of opIds) {
      if (this.byId.delete(id)) {
        n++;
        this.batch.put.delete(id);
        this.batch.del.add(id);
      }
    }
    if (n) {
      // Acks arrive in order from the front: skip the answered prefix, compact now and then.
      const items = this.items;
      while (this.head < items.length && this.byId.get(items[this.head].op.op) !== items[this.head]) this.head++;
      if (this.head > 1024 && this.head * 2 > items.length) {
        this.items = items.slice(this.head).filter((q) => this.byId.get(q.op.op) === q);
        this.head = 0;
      }
      this.touch();
    }
    return n;
  }

  /** Give a queued op a new HLC (encoded), in place; null when it is not queued. */
  restamp(opId, hlc, meta = null) {
    const q = this.byId.get(opId);
    if (!q) return null;
    const nq = { seq: q.seq, op: { ...q.op, hlc } };
    const i = this.items.indexOf(q);
    this.items[i] = nq;
    this.byId.set(opId, nq);
    this.batch.put.set(opId, nq);
    if (meta) this.setMeta(meta);
    this.touch();
    return nq;
  }

  /** Drop every queued op (the caller chose to lose unsynced ops); returns how many. */
  clear() {
    const n = this.byId.size;
    this.items = [];
    this.head = 0;
    this.byId = new Map();
    this.batch.clear = true;
    this.batch.put = new Map();
    this.batch.del = new Set();
    this.touch();
    return n;
  }

  getMeta(key, fallback = undefined) {
    return key in this.meta ? this.meta[key] : fallback;
  }

  setMeta(values) {
    Object.assign(this.meta, values);
    Object.assign(this.batch.meta, values);
    this.touch();
  }

  saveReplica(position, records, { reset = false } = {}) {
    this.replica = { position, records: reset ? { ...records } : Object.assign(this.replica.records, records) };
    const b = this.batch.replica;
    if (b === null || reset) this.batch.replica = { position, records: { ...records }, reset };
    else this.batch.replica = { position, records: Object.assign(b.records, records), reset: b.reset };
    this.touch();
  }

  loadReplica() {
    return { position: this.replica.position, records: { ...this.replica.records } };
  }

  touch() {
    this.dirty = true;
    if (this.scheduled) return;
    this.scheduled = true;
    this.chain = this.chain.then(() => this.writeBatch());
  }

  async writeBatch() {
    this.scheduled = false;
    if (!this.dirty) return;
    const b = this.batch;
    this.batch = emptyBatch();
    this.dirty = false;
    try {
      await this.store.write({ clear: b.clear, del: [...b.del], put: [...b.put.values()], meta: b.meta, replica: b.replica });
    } catch (e) {
      this.writeError = e;
      if (this.onWriteError) this.onWriteError(e);
    }
  }

  /** Resolves once every change made so far is written to the store. */
  flush() {
    if (this.dirty && !this.scheduled) this.touch();
    return this.chain;
  }

  async close() {
    await this.flush();
    await this.store.close();
  }
}

function clone(v) {
  return typeof structuredClone === "function" ? structuredClone(v) : JSON.parse(JSON.stringify(v));
}

/**
 * In memory (a page that must not persist, and tests). Survives a "reload" when the same
 * store object is opened again; copies what it stores, as IndexedDB does.
 */
export class MemoryStore {
  constructor() {
    this.ops = new Map();
    this.meta = {};
    this.replica = { position: 0, records: {} };
    this.writes = 0;
  }

  async load() {
    return clone({ ops: [...this.ops.values()], meta: this.meta, replica: this.replica });
  }

  async write({ clear, del, put, meta, replica }) {
    this.writes++;
    if (clear) this.ops.clear();
    for (const id of del) this.ops.delete(id);
    for (const q of put) this.ops.set(q.op.op, clone(q));
    Object.assign(this.meta, clone(meta));
    if (replica) {
      const records = clone(replica.records);
      this.replica = { position: replica.position, records: replica.reset ? records : Object.assign(this.replica.records, records) };
    }
  }

  async close() {}
}

const OPS = "ops";
const META = "meta";
const REPLICA = "replica";

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
  });
}

/**
 * IndexedDB: one database per client queue (`name`), three object stores: `ops` (by op
 * id, with its seq), `meta` (key -> value) and `replica` (stream -> [version, state], and
 * the position under meta `position`). Each `write` is one readwrite transaction, so a
 * batch of ops and the meta that goes with them land together or not at all; IndexedDB
 * keeps them across reloads and browser restarts.
 */
export class IndexedDbStore {
  /** @param {string} name database name (one per user and app); @param {IDBFactory} indexedDB (default: the global) */
  constructor(name = "syncline-queue", { indexedDB = globalThis.indexedDB } = {}) {
    if (!indexedDB) throw new Error("IndexedDB is not available here: pass {indexedDB} or use MemoryStore");
    this.name = name;
    this.idb = indexedDB;
    this.db = null;
  }

  async open() {
    if (this.db) return this.db;
    const r = this.idb.open(this.name, 1);
    r.onupgradeneeded = () => {
      const db = r.result;
      if (!db.objectStoreNames.contains(OPS)) db.createObjectStore(OPS, { keyPath: "op.op" });
      if (!db.objectStoreNames.contains(META)) db.createObjectStore(META);
      if (!db.objectStoreNames.contains(REPLICA)) db.createObjectStore(REPLICA);
    };
    this.db = await req(r);
    return this.db;
  }

  async load() {
    const db = await this.open();
    const tx = db.transaction([OPS, META, REPLICA], "readonly");
    const ops = req(tx.objectStore(OPS).getAll());
    const metaKeys = req(tx.objectStore(META).getAllKeys());
    const metaValues = req(tx.objectStore(META).getAll());
    const repKeys = req(tx.objectStore(REPLICA).getAllKeys());
    const repValues = req(tx.objectStore(REPLICA).getAll());
    const [o, mk, mv, rk, rv] = await Promise.all([ops, metaKeys, metaValues, repKeys, repValues]);
    await done(tx);
    const meta = {};
    mk.forEach((k, i) => (meta[k] = mv[i]));
    const records = {};
    rk.forEach((k, i) => (records[k] = rv[i]));
    const position = meta.position || 0;
    delete meta.position;
    return { ops: o, meta, replica: { position, records } };
  }

  async write({ clear, del, put, meta, replica }) {
    const db = await this.open();
    const tx = db.transaction([OPS, META, REPLICA], "readwrite");
    const finished = done(tx);
    const ops = tx.objectStore(OPS);
    if (clear) ops.clear();
    for (const id of del) ops.delete(id);
    for (const q of put) ops.put(q);
    const m = tx.objectStore(META);
    for (const [k, v] of Object.entries(meta)) m.put(v, k);
    if (replica) {
      const rs = tx.objectStore(REPLICA);
      if (replica.reset) rs.clear();
      for (const [stream, body] of Object.entries(replica.records)) rs.put(body, stream);
      m.put(replica.position, "position");
    }
    await finished;
  }

  async close() {
    if (this.db) this.db.close();
    this.db = null;
  }

  /** Delete the database (a user signing out). */
  async destroy() {
    await this.close();
    await req(this.idb.deleteDatabase(this.name));
  }
}
