/**
 * Vector clocks and hybrid logical clocks, as engine/clocks.py defines them.
 *
 * A vector clock is a plain object `{node: counter}` (counters >= 1; an absent node is 0),
 * never mutated once built: every operation returns a new object (or one of its inputs
 * when nothing changes). `vcToWire` sorts the nodes, the canonical order the server
 * expects. An HLC timestamp is `{wall, logical, node}`; its text form
 * (`%012x-%08x-%s`) sorts as the timestamps do.
 */

export const WALL_MS_MAX = 2 ** 48 - 1;
export const LOGICAL_MAX = 2 ** 32 - 1;

const EMPTY = Object.freeze({});
export const EMPTY_CLOCK = EMPTY;

/** Whether every counter of `a` is <= `b`'s (a happened before b, or equals it). */
export function vcLeq(a, b) {
  for (const node in a) {
    if (a[node] > (b[node] || 0)) return false;
  }
  return true;
}

export function vcEqual(a, b) {
  return vcLeq(a, b) && vcLeq(b, a);
}

/** Strictly before: `a <= b` and not equal. */
export function vcLt(a, b) {
  return vcLeq(a, b) && !vcLeq(b, a);
}

/** "before" | "after" | "equal" | "concurrent" (a compared with b). */
export function vcCompare(a, b) {
  const le = vcLeq(a, b);
  const ge = vcLeq(b, a);
  if (le && ge) return "equal";
  if (le) return "before";
  if (ge) return "after";
  return "concurrent";
}

/** The least upper bound (pointwise max); returns an input when it already covers the other. */
export function vcMerge(a, b) {
  if (vcLeq(b, a)) return a;
  if (vcLeq(a, b)) return b;
  const out = { ...a };
  for (const node in b) {
    if (b[node] > (out[node] || 0)) out[node] = b[node];
  }
  return out;
}

export function vcIncrement(c, node) {
  if (typeof node !== "string" || !node) throw new TypeError(`invalid node id ${node}`);
  return { ...c, [node]: (c[node] || 0) + 1 };
}

/** The wire form: nodes sorted (what `VectorClock.to_dict` writes). */
export function vcToWire(c) {
  const out = {};
  for (const node of Object.keys(c).sort()) out[node] = c[node];
  return out;
}

/** A clock from the wire (checked: string nodes, integer counters 1..2^53). */
export function vcFromWire(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new TypeError("a vector clock must be a map of node -> counter");
  }
  const out = {};
  for (const node of Object.keys(data)) {
    const n = data[node];
    if (!node || !Number.isInteger(n) || n < 0) throw new TypeError(`invalid clock entry ${node}: ${n}`);
    if (n > 0) out[node] = n;
  }
  return out;
}

// ------------------------------------------------------------------ HLC

const HLC_TEXT = /^([0-9a-f]{12})-([0-9a-f]{8})-([\s\S]+)$/;

export function hlcEncode(h) {
  return h.wall.toString(16).padStart(12, "0") + "-" + h.logical.toString(16).padStart(8, "0") + "-" + h.node;
}

export function hlcDecode(text) {
  const m = typeof text === "string" ? HLC_TEXT.exec(text) : null;
  if (m === null) throw new TypeError(`invalid HLC timestamp ${String(text).slice(0, 80)}`);
  return { wall: parseInt(m[1], 16), logical: parseInt(m[2], 16), node: m[3] };
}

/** Compare two HLC timestamps (tuple order: wall, logical, node). */
export function hlcCmp(a, b) {
  if (a.wall !== b.wall) return a.wall < b.wall ? -1 : 1;
  if (a.logical !== b.logical) return a.logical < b.logical ? -1 : 1;
  return a.node < b.node ? -1 : a.node > b.node ? 1 : 0;
}

function clampWall(pt) {
  pt = Math.floor(pt);
  return pt < 0 ? 0 : pt > WALL_MS_MAX ? WALL_MS_MAX : pt;
}

function advance(wall, logical, node) {
  if (logical > LOGICAL_MAX) {
    wall += 1;
    logical = 0;
    if (wall > WALL_MS_MAX) throw new RangeError("HLC exhausted");
  }
  return { wall, logical, node };
}

/** The next local timestamp after `last` (`hlc_send`). */
export function hlcSend(last, physicalMs, node) {
  const pt = clampWall(physicalMs);
  if (!last || pt > last.wall) return { wall: pt, logical: 0, node };
  return advance(last.wall, last.logical + 1, node);
}

export class ClockDriftError extends Error {
  constructor(message) {
    super(message);
    this.code = "clock_drift";
  }
}

/** The local timestamp after receiving `remote` (`hlc_receive`): greater than both. */
export function hlcReceive(last, remote, physicalMs, node, maxDriftMs = null) {
  const pt = clampWall(physicalMs);
  if (maxDriftMs !== null && remote.wall - pt > maxDriftMs) {
    throw new ClockDriftError(`remote clock is ${remote.wall - pt} ms ahead (limit ${maxDriftMs} ms)`);
  }
  const lw = last ? last.wall : -1;
  const ll = last ? last.logical : 0;
  const wall = Math.max(lw, remote.wall, pt);
  let logical;
  if (wall === lw && wall === remote.wall) logical = Math.max(ll, remote.logical) + 1;
  else if (wall === lw) logical = ll + 1;
  else if (wall === remote.wall) logical = remote.logical + 1;
  else logical = 0;
  return advance(wall, logical, node);
}
