/**
 * Record state and its fold over `record.patched` events: engine/records (state.py,
 * kernel.py, fold.py, snapshots.py) in JavaScript, rule for rule.
 *
 * A record is `{stream, fields: Map<name, field>, clock, receipts: Set<op id>}`; a field is
 *
 *   {t: "lww", stamp, value, deleted, clock}              the winning write
 *   {t: "manual", versions: [{stamp, value, deleted}], clock, conflictId}
 *   {t: "merge", merge: name, acc, clock, last: stamp}     acc is NO_INITIAL before an operand
 *
 * and a stamp `{op, client, user, hlc: {wall, logical, node}, clock}`. Folding the same
 * events gives the same fields and clocks as the server's fold (`fold_record_events`),
 * so after quiescence every replica shows what the server holds:
 *
 * - LWW keeps the write of greatest rank (wall, logical, client id, op id);
 * - MANUAL keeps the causally maximal writes; more than one is a conflict whose id is
 *   `cf_` + the first 32 hex digits of sha256(stream \0 field \0 sorted op ids);
 * - MERGE folds every operand once into the accumulator.
 *
 * The patch itself says which strategy each field was written with (its `lww`,
 * `manual`, `merge`, `deleted` groups), so folding needs no resolution config.
 */
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils.js";

import { EMPTY_CLOCK, hlcDecode, hlcEncode, vcCompare, vcFromWire, vcLeq, vcLt, vcMerge, vcToWire } from "./clocks.js";
import { BUILTINS, NO_INITIAL } from "./merges.js";

export const RECORD_PATCHED = "record.patched";
export const CONFLICT_DETECTED = "conflict.detected";
export const CONFLICT_RESOLVED = "conflict.resolved";

export function newRecord(stream) {
  return { stream, fields: new Map(), clock: EMPTY_CLOCK, receipts: new Set() };
}

function cmpStr(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The LWW order of two stamps: (wall, logical, client, op id). */
export function rankCmp(a, b) {
  const ha = a.hlc;
  const hb = b.hlc;
  if (ha.wall !== hb.wall) return ha.wall < hb.wall ? -1 : 1;
  if (ha.logical !== hb.logical) return ha.logical < hb.logical ? -1 : 1;
  return cmpStr(a.client, b.client) || cmpStr(a.op, b.op);
}

export function conflictId(stream, field, opIds) {
  const parts = [stream, field, ...[...opIds].sort(cmpStr)];
  return "cf_" + bytesToHex(sha256(utf8ToBytes(parts.join("\0")))).slice(0, 32);
}

/** The record as its readers see it: field -> value, deleted fields left out. */
export function recordValues(rec) {
  const out = {};
  if (!rec) return out;
  for (const [name, f] of rec.fields) {
    if (f.t === "merge") {
      if (f.acc !== NO_INITIAL) out[name] = f.acc;
    } else if (f.t === "manual") {
      if (!f.versions[0].deleted) out[name] = f.versions[0].value;
    } else if (!f.deleted) {
      out[name] = f.value;
    }
  }
  return out;
}

/** Open manual conflicts of a record: `{id, stream, field, versions, held}`, by field name. */
export function recordConflicts(rec) {
  const out = [];
  if (!rec) return out;
  for (const name of [...rec.fields.keys()].sort(cmpStr)) {
    const f = rec.fields.get(name);
    if (f.t === "manual" && f.conflictId) {
      out.push({ id: f.conflictId, stream: rec.stream, field: name, versions: f.versions, held: f.versions[0] });
    }
  }
  return out;
}

// ------------------------------------------------------------------ strategy changes

function current(old, registry) {
  if (old.t === "merge") {
    let value = old.acc === NO_INITIAL ? null : old.acc;
    if (registry.has(old.merge) && old.acc !== NO_INITIAL) value = registry.get(old.merge).encode(old.acc);
    return { stamp: old.last, value, deleted: old.acc === NO_INITIAL };
  }
  if (old.t === "manual") return old.versions[0];
  return { stamp: old.stamp, value: old.value, deleted: old.deleted };
}

function toLww(old, registry) {
  let w;
  if (old.t === "manual") {
    w = old.versions.reduce((best, v) => (rankCmp(v.stamp, best.stamp) > 0 ? v : best));
  } else {
    w = current(old, registry);
  }
  return { t: "lww", stamp: w.stamp, value: w.value, deleted: w.deleted, clock: old.clock };
}

function toManual(old, registry) {
  return { t: "manual", versions: [current(old, registry)], clock: old.clock, conflictId: null };
}

function toMerge(old, mf, registry) {
  const cur = current(old, registry);
  let acc = mf.initial;
  if (!cur.deleted) {
    try {
      acc = mf.combine(acc, mf.validate(cur.value));
    } catch {
      // the old value is no operand of the new function: start afresh
    }
  }
  return { t: "merge", merge: mf.name, acc, clock: old.clock, last: cur.stamp };
}

/**
 * One accepted op's field changes onto `fields` (mutated), as kernel.apply_changes.
 * `changes`: [{name, strategy: "lww"|"manual"|"merge", value, deleted, mf}].
 * `newer`: the op's clock covers the record's clock (so every field's).
 */
export function applyChanges(fields, stream, stamp, changes, registry, newer) {
  const clock = stamp.clock;
  for (const { name, strategy, value, deleted, mf } of changes) {
    let old = fields.get(name);
    if (strategy === "manual") {
      const w = { stamp, value, deleted };
      if (old === undefined) {
        fields.set(name, { t: "manual", versions: [w], clock, conflictId: null });
        continue;
      }
      if (old.t !== "manual") old = toManual(old, registry);
      const versions = old.versions;
      if (versions.some((v) => vcLt(clock, v.stamp.clock))) {
        // Someone already wrote over this version knowingly: it arrives late.
        fields.set(name, { t: "manual", versions, clock: vcMerge(old.clock, clock), conflictId: old.conflictId });
        continue;
      }
      const keep = versions.filter((v) => !vcLt(v.stamp.clock, clock));
      keep.push(w);
      let cid = null;
      if (keep.length > 1) {
        keep.sort((a, b) => rankCmp(a.stamp, b.stamp));
        cid = conflictId(stream, name, keep.map((v) => v.stamp.op));
      }
      fields.set(name, { t: "manual", versions: keep, clock: vcMerge(old.clock, clock), conflictId: cid });
      continue;
    }
    const isLww = strategy === "lww";
    if (old === undefined) {
      if (isLww) {
        fields.set(name, { t: "lww", stamp, value, deleted, clock });
      } else {
        const acc = mf.initial;
        fields.set(name, { t: "merge", merge: mf.name, acc: acc === NO_INITIAL ? value : mf.fn(acc, value), clock, last: stamp });
      }
      continue;
    }
    let oldStamp;
    if (isLww) {
      if (old.t !== "lww") old = toLww(old, registry);
      oldStamp = old.stamp;
    } else {
      if (old.t !== "merge" || old.merge !== mf.name) old = toMerge(old, mf, registry);
      oldStamp = old.last;
    }
    // The field's new clock: the op's when it comes after (or equals) the field's
    // history, the merge of both when they are concurrent.
    let newClock;
    if (newer) {
      newClock = clock;
    } else {
      const order = vcCompare(clock, old.clock);
      newClock = order === "after" ? clock : order === "concurrent" ? vcMerge(old.clock, clock) : old.clock;
    }
    const wins = rankCmp(stamp, oldStamp) > 0;
    if (isLww) {
      fields.set(name, wins
        ? { t: "lww", stamp, value, deleted, clock: newClock }
        : { t: "lww", stamp: old.stamp, value: old.value, deleted: old.deleted, clock: newClock });
    } else {
      const acc = old.acc === NO_INITIAL ? value : mf.fn(old.acc, value);
      fields.set(name, { t: "merge", merge: mf.name, acc, clock: newClock, last: wins ? stamp : oldStamp });
    }
  }
}

/** Stamp and field changes of a `record.patched` payload (payloads.decode_patch_body). */
export function decodePatch(data, registry = BUILTINS) {
  const stamp = { op: data.op, client: data.client, user: data.user, hlc: hlcDecode(data.hlc), clock: vcFromWire(data.vc) };
  const changes = [];
  for (const [name, value] of Object.entries(data.lww || {})) changes.push({ name, strategy: "lww", value, deleted: false, mf: null });
  for (const [name, value] of Object.entries(data.manual || {})) changes.push({ name, strategy: "manual", value, deleted: false, mf: null });
  for (const [name, [fn, operand]] of Object.entries(data.merge || {})) {
    const mf = registry.get(fn);
    changes.push({ name, strategy: "merge", value: mf.validate(operand), deleted: false, mf });
  }
  for (const [name, strategy] of Object.entries(data.deleted || {})) changes.push({ name, strategy, value: null, deleted: true, mf: null });
  return { stamp, changes };
}

/**
 * Fold one `record.patched` wire event into `records` (Map stream -> record, mutated;
 * the touched record is copied first, so a caller holding the old object keeps it).
 * Returns the stream it changed, or null (another type, or an op folded before).
 */
export function foldEvent(records, ev, registry = BUILTINS) {
  if (ev.type !== RECORD_PATCHED || typeof ev.stream !== "string" || !ev.stream.startsWith("rec/")) return null;
  const data = ev.data;
  if (!data || typeof data !== "object") return null;
  const prior = records.get(ev.stream);
  if (prior && prior.receipts.has(data.op)) return null; // an op is in the log once
  const { stamp, changes } = decodePatch(data, registry);
  const rec = prior
    ? { stream: prior.stream, fields: new Map(prior.fields), clock: prior.clock, receipts: new Set(prior.receipts) }
    : newRecord(ev.stream);
  const covered = vcLeq(stamp.clock, rec.clock);
  const newer = vcLeq(rec.clock, stamp.clock);
  applyChanges(rec.fields, rec.stream, stamp, changes, registry, newer);
  if (!covered) rec.clock = vcMerge(rec.clock, stamp.clock);
  rec.receipts.add(stamp.op);
  records.set(rec.stream, rec);
  return rec.stream;
}

// ------------------------------------------------------------------ encoded state (snapshots)

function stampToWire(s) {
  return [s.op, s.client, s.user, hlcEncode(s.hlc), vcToWire(s.clock)];
}

function stampFromWire(s) {
  const [op, client, user, hlc, vc] = s;
  return { op, client, user, hlc: hlcDecode(hlc), clock: vcFromWire(vc) };
}

/** `encode_record_state`: `{vc, fields: {name: F}}` (the snapshot's `state`). */
export function encodeRecordState(rec, registry = BUILTINS) {
  const fields = {};
  for (const [name, f] of rec.fields) {
    if (f.t === "lww") {
      fields[name] = ["lww", stampToWire(f.stamp), f.value, f.deleted, vcToWire(f.clock)];
    } else if (f.t === "manual") {
      fields[name] = ["manual", f.versions.map((w) => [stampToWire(w.stamp), w.value, w.deleted]), vcToWire(f.clock), f.conflictId];
    } else {
      const body = ["merge", f.merge, vcToWire(f.clock), stampToWire(f.last)];
      if (f.acc !== NO_INITIAL) body.push(registry.get(f.merge).encode(f.acc));
      fields[name] = body;
    }
  }
  return { vc: vcToWire(rec.clock), fields };
}

export class InvalidRecordState extends Error {
  constructor(message) {
    super(message);
    this.code = "invalid_record_state";
  }
}

/** `decode_record_state` (receipts empty). Throws InvalidRecordState. */
export function decodeRecordState(stream, data, registry = BUILTINS) {
  try {
    const fields = new Map();
    for (const [name, f] of Object.entries(data.fields)) {
      const kind = f[0];
      if (kind === "lww") {
        fields.set(name, { t: "lww", stamp: stampFromWire(f[1]), value: f[2], deleted: Boolean(f[3]), clock: vcFromWire(f[4]) });
      } else if (kind === "manual") {
        const versions = f[1].map((w) => ({ stamp: stampFromWire(w[0]), value: w[1], deleted: Boolean(w[2]) }));
        if (!versions.length) throw new Error("a manual field without versions");
        fields.set(name, { t: "manual", versions, clock: vcFromWire(f[2]), conflictId: f[3] ?? null });
      } else if (kind === "merge") {
        const mf = registry.get(f[1]);
        const acc = f.length > 4 ? mf.validate(f[4]) : NO_INITIAL;
        fields.set(name, { t: "merge", merge: mf.name, acc, clock: vcFromWire(f[2]), last: stampFromWire(f[3]) });
      } else {
        throw new Error(`unknown field kind ${kind}`);
      }
    }
    return { stream, fields, clock: vcFromWire(data.vc), receipts: new Set() };
  } catch (e) {
    if (e instanceof InvalidRecordState) throw e;
    throw new InvalidRecordState(`record state of ${stream} does not decode: ${e.message}`);
  }
}
