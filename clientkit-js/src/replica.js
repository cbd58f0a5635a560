/**
 * The local records replica: confirmed server state plus an optimistic overlay
 * (clientkit/replica.py).
 *
 * - `confirmed`: the fold of the `record.patched` events the server sent (records.js:
 *   the server's own rules), so after quiescence every replica holds the server's data;
 * - `pending`: the client's own ops not yet seen back in the log, in order. `get`
 *   overlays them on the confirmed values, so the page sees its edits at once, online or
 *   offline. An op leaves the overlay when its event arrives, when the server rejects it,
 *   or when an installed state (a snapshot, or the state saved before a reload) already
 *   contains it: its clock is covered by the record's clock.
 *
 * Conflicts (manual fields holding concurrent versions) are reported once per conflict id.
 */
import { EMPTY_CLOCK, vcFromWire, vcLeq } from "./clocks.js";
import { BUILTINS, NO_INITIAL } from "./merges.js";
import { decodeRecordState, encodeRecordState, foldEvent, recordConflicts, recordValues, RECORD_PATCHED } from "./records.js";
import { collectionOf, ResolutionConfig } from "./resolution.js";

const SNAPSHOT_STAMP = Object.freeze({ op: "snapshot", client: "~snapshot", user: "", hlc: { wall: 0, logical: 0, node: "~snapshot" }, clock: EMPTY_CLOCK });

export class RecordsReplica {
  /** @param {ResolutionConfig|null} config the server's rules (for the overlay of merge fields) */
  constructor(config = null, registry = null) {
    this.setConfig(config, registry);
    this.confirmed = new Map(); // stream -> record
    this.pending = new Map(); // op id -> wire op, in the order they were made
    this.backup = null; // the confirmed state a snapshot replaced
    this.seenConflicts = new Set();
    this.versionBase = new Map(); // an installed state has no receipts: its version, per stream
    this.covered = new Map(); // op id -> stream: pending ops an installed state contained
    this.dirty = null; // streams changed since the last export (null: not tracking)
  }

  setConfig(config, registry = null) {
    this.config = config instanceof ResolutionConfig ? config : config ? new ResolutionConfig(config, registry || BUILTINS) : null;
    this.registry = this.config ? this.config.registry : registry || BUILTINS;
  }

  // -- reads

  /** The record as the user sees it: confirmed values with pending own ops on top. */
  get(stream) {
    const rec = this.confirmed.get(stream);
    const values = recordValues(rec);
    for (const op of this.pending.values()) {
      if (op.stream !== stream) continue;
      if (op.kind === "resolve") {
        if (op.deleted) delete values[op.field];
        else values[op.field] = op.value;
        continue;
      }
      for (const [name, value] of Object.entries(op.set || {})) {
        const mf = this.mergeFunction(rec, stream, name);
        if (mf === null) {
          values[name] = value;
        } else {
          const cur = name in values && values[name] !== null ? values[name] : NO_INITIAL;
          try {
            values[name] = mf.combine(cur, mf.validate(value));
          } catch {
            values[name] = value; // the server will reject it; show what was written meanwhile
          }
        }
      }
      for (const name of op.delete || []) delete values[name];
    }
    return values;
  }

  streams() {
    const names = new Set(this.confirmed.keys());
    for (const op of this.pending.values()) names.add(op.stream);
    return [...names].sort();
  }

  clock(stream) {
    const rec = this.confirmed.get(stream);
    return rec ? rec.clock : EMPTY_CLOCK;
  }

  version(stream) {
    const rec = this.confirmed.get(stream);
    return (rec ? rec.receipts.size : 0) + (this.versionBase.get(stream) || 0);
  }

  /** Whether reads include this op of ours: pending, folded, or in an installed state. */
  sees(opId, stream) {
    if (this.pending.has(opId) || this.covered.has(opId)) return true;
    const rec = this.confirmed.get(stream);
    return Boolean(rec && rec.receipts.has(opId));
  }

  conflicts(stream = null) {
    const recs = stream ? [this.confirmed.get(stream)] : [...this.confirmed.values()];
    return recs.flatMap((r) => recordConflicts(r));
  }

  conflict(id) {
    return this.conflicts().find((c) => c.id === id) || null;
  }

  // -- writes

  local(op) {
    this.pending.set(op.op, op);
  }

  forget(opId) {
    this.pending.delete(opId);
  }

  /** Fold the `record.patched` events of a batch; returns the conflicts not reported before. */
  applyWireEvents(events) {
    const touched = new Set();
    for (const e of events) {
      if (e.type !== RECORD_PATCHED) continue;
      const stream = foldEvent(this.confirmed, e, this.registry);
      if (stream !== null) touched.add(stream);
      const op = e.data && e.data.op;
      if (op !== undefined) this.pending.delete(op);
    }
    if (this.dirty !== null) for (const s of touched) this.dirty.add(s);
    const fresh = [];
    for (const s of touched) {
      for (const c of recordConflicts(this.confirmed.get(s))) {
        if (!this.seenConflicts.has(c.id)) {
          this.seenConflicts.add(c.id);
          fresh.push(c);
        }
      }
    }
    return fresh;
  }

  /**
   * Replace the confirmed state with a snapshot's records, in one step (the previous one
   * is kept in `backup`). Each record body carries its field state, so merging continues
   * exactly as if every event had been folded; a body with values only gets the weakest
   * stamp (any later write supersedes those values).
   */
  installSnapshot(content, { keepPending = true } = {}) {
    const records = new Map();
    const versions = new Map();
    for (const [stream, body] of Object.entries(content || {})) {
      if (!body || typeof body !== "object" || body.kind !== "record") continue;
      if (body.state && typeof body.state === "object") records.set(stream, decodeRecordState(stream, body.state, this.registry));
      else records.set(stream, this.fromValues(stream, body.values || {}));
      versions.set(stream, Number.isInteger(body.version) && body.version > 0 ? body.version : 0);
    }
    this.backup = this.confirmed;
    if (!keepPending) this.pending.clear();
    this.install(records, versions);
  }

  fromValues(stream, values) {
    const fields = new Map();
    for (const [name, value] of Object.entries(values)) {
      const mfName = this.mergeName(stream, name);
      if (mfName !== null) {
        fields.set(name, { t: "merge", merge: mfName, acc: this.registry.get(mfName).validate(value), clock: EMPTY_CLOCK, last: SNAPSHOT_STAMP });
      } else {
        fields.set(name, { t: "lww", stamp: SNAPSHOT_STAMP, value, deleted: false, clock: EMPTY_CLOCK });
      }
    }
    return { stream, fields, clock: EMPTY_CLOCK, receipts: new Set() };
  }

  install(records, versions) {
    this.confirmed = records;
    this.versionBase = versions;
    this.covered = new Map();
    if (this.dirty !== null) this.dirty = new Set(records.keys());
    for (const [opId, op] of [...this.pending]) {
      const rec = records.get(op.stream);
      // An accepted op's clock is part of its record's clock; a client's ticks on a record
      // only grow, so a covered op is no longer the overlay's to show.
      if (rec && vcLeq(vcFromWire(op.vc), rec.clock)) {
        this.pending.delete(opId);
        this.covered.set(opId, op.stream);
      }
    }
  }

  // -- persistence

  trackChanges() {
    if (this.dirty === null) this.dirty = new Set(this.confirmed.keys());
  }

  /** Records changed since the last export (all with `everything`): stream -> [version, state]. */
  export({ everything = false } = {}) {
    const streams = everything || this.dirty === null ? [...this.confirmed.keys()] : [...this.dirty];
    const out = {};
    for (const s of streams) {
      const rec = this.confirmed.get(s);
      if (rec) out[s] = [this.version(s), encodeRecordState(rec, this.registry)];
    }
    this.dirty = new Set();
    return out;
  }

  /** Load records saved by `export` (the confirmed state a reload resumes from). */
  restore(saved) {
    const records = new Map();
    const versions = new Map();
    for (const [stream, [version, state]] of Object.entries(saved)) {
      records.set(stream, decodeRecordState(stream, state, this.registry));
      versions.set(stream, version);
    }
    this.install(records, versions);
    this.dirty = new Set();
  }

  mergeName(stream, name) {
    const coll = collectionOf(stream);
    if (this.config === null || coll === null) return null;
    const rule = this.config.fieldRule(coll, name);
    return rule && rule.strategy === "merge" ? rule.merge : null;
  }

  mergeFunction(rec, stream, name) {
    const f = rec ? rec.fields.get(name) : undefined;
    if (f && f.t === "merge") return this.registry.get(f.merge);
    const n = this.mergeName(stream, name);
    return n !== null ? this.registry.get(n) : null;
  }
}
