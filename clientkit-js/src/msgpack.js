/**
 * Just enough msgpack for snapshots: decoding a chunked snapshot (`[position, content]`)
 * and re-encoding it canonically to check its checksum (engine/codec.py `canonical`:
 * maps become lists of [key, value] pairs sorted by Python's `repr` of the key, packed
 * as msgpack-python packs: the smallest integer form, floats as float64).
 *
 * JavaScript has one number type, and the checksum depends on whether the server packed
 * 1 or 1.0, so the decoder keeps that: `decodeTyped` returns a tree whose floats are
 * `{f: value}` boxes, `plain` turns it into ordinary values and `canonical` encodes it.
 */

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.i = 0;
  }
}

const FLOAT = Symbol("float");
const MAP = Symbol("map");
const text = new TextDecoder("utf-8", { fatal: true });

function str(r, n) {
  const s = text.decode(r.b.subarray(r.i, r.i + n));
  r.i += n;
  return s;
}

function bin(r, n) {
  const out = r.b.slice(r.i, r.i + n);
  r.i += n;
  return out;
}

function arr(r, n, depth) {
  const out = new Array(n);
  for (let k = 0; k < n; k++) out[k] = read(r, depth + 1);
  return out;
}

function map(r, n, depth) {
  const entries = [];
  for (let k = 0; k < n; k++) entries.push([read(r, depth + 1), read(r, depth + 1)]);
  return { [MAP]: entries };
}

function bigint(x) {
  if (x > BigInt(Number.MAX_SAFE_INTEGER) || x < -BigInt(Number.MAX_SAFE_INTEGER)) return x;
  return Number(x);
}

function read(r, depth) {
  if (depth > 512) throw new RangeError("msgpack nesting too deep");
  if (r.i >= r.b.length) throw new RangeError("msgpack data ends early");
  const c = r.b[r.i++];
  const v = r.v;
  if (c <= 0x7f) return c;
  if (c >= 0xe0) return c - 0x100;
  if ((c & 0xf0) === 0x80) return map(r, c & 0x0f, depth);
  if ((c & 0xf0) === 0x90) return arr(r, c & 0x0f, depth);
  if ((c & 0xe0) === 0xa0) return str(r, c & 0x1f);
  let x;
  switch (c) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: x = r.b[r.i]; r.i += 1; return bin(r, x);
    case 0xc5: x = v.getUint16(r.i); r.i += 2; return bin(r, x);
    case 0xc6: x = v.getUint32(r.i); r.i += 4; return bin(r, x);
    case 0xca: x = v.getFloat32(r.i); r.i += 4; return { [FLOAT]: x };
    case 0xcb: x = v.getFloat64(r.i); r.i += 8; return { [FLOAT]: x };
    case 0xcc: x = v.getUint8(r.i); r.i += 1; return x;
    case 0xcd: x = v.getUint16(r.i); r.i += 2; return x;
    case 0xce: x = v.getUint32(r.i); r.i += 4; return x;
    case 0xcf: x = v.getBigUint64(r.i); r.i += 8; return bigint(x);
    case 0xd0: x = v.getInt8(r.i); r.i += 1; return x;
    case 0xd1: x = v.getInt16(r.i); r.i += 2; return x;
    case 0xd2: x = v.getInt32(r.i); r.i += 4; return x;
    case 0xd3: x = v.getBigInt64(r.i); r.i += 8; return bigint(x);
    case 0xd9: x = r.b[r.i]; r.i += 1; return str(r, x);
    case 0xda: x = v.getUint16(r.i); r.i += 2; return str(r, x);
    case 0xdb: x = v.getUint32(r.i); r.i += 4; return str(r, x);
    case 0xdc: x = v.getUint16(r.i); r.i += 2; return arr(r, x, depth);
    case 0xdd: x = v.getUint32(r.i); r.i += 4; return arr(r, x, depth);
    case 0xde: x = v.getUint16(r.i); r.i += 2; return map(r, x, depth);
    case 0xdf: x = v.getUint32(r.i); r.i += 4; return map(r, x, depth);
    default: throw new RangeError(`unsupported msgpack type 0x${c.toString(16)}`);
  }
}

/** msgpack bytes -> a typed tree (floats boxed, maps as entry lists). */
export function decodeTyped(bytes) {
  const r = new Reader(bytes);
  const out = read(r, 0);
  if (r.i !== bytes.length) throw new RangeError("extra bytes after the msgpack value");
  return out;
}

/** A typed tree -> plain JavaScript values (maps become objects with string keys). */
export function plain(t) {
  if (t === null || typeof t !== "object") return typeof t === "bigint" ? Number(t) : t;
  if (t instanceof Uint8Array) return t;
  if (Array.isArray(t)) return t.map(plain);
  if (FLOAT in t) return t[FLOAT];
  const o = {};
  for (const [k, v] of t[MAP]) o[String(plain(k))] = plain(v);
  return o;
}

export function decode(bytes) {
  return plain(decodeTyped(bytes));
}

// ------------------------------------------------------------------ canonical encoding

/** Python's repr() of a map key, for the canonical sort order. */
export function pyRepr(k) {
  if (typeof k === "string") {
    const quote = k.includes("'") && !k.includes('"') ? '"' : "'";
    let s = quote;
    for (const ch of k) {
      const c = ch.codePointAt(0);
      if (ch === "\\") s += "\\\\";
      else if (ch === quote) s += "\\" + quote;
      else if (ch === "\n") s += "\\n";
      else if (ch === "\r") s += "\\r";
      else if (ch === "\t") s += "\\t";
      else if (c < 0x20 || c === 0x7f || (c >= 0x80 && c < 0xa0)) s += "\\x" + c.toString(16).padStart(2, "0");
      else s += ch;
    }
    return s + quote;
  }
  if (k === null) return "None";
  if (k === true) return "True";
  if (k === false) return "False";
  if (typeof k === "number" || typeof k === "bigint") return String(k);
  if (k && typeof k === "object" && FLOAT in k) {
    const f = k[FLOAT];
    return Number.isInteger(f) ? f.toFixed(1) : String(f);
  }
  return String(k);
}

function cmpCodePoints(a, b) {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done === y.done ? 0 : x.done ? -1 : 1;
    const d = x.value.codePointAt(0) - y.value.codePointAt(0);
    if (d) return d;
  }
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(1024);
    this.v = new DataView(this.buf.buffer);
    this.n = 0;
  }

  room(k) {
    if (this.n + k <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.n + k) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.n));
    this.buf = b;
    this.v = new DataView(b.buffer);
  }

  byte(x) {
    this.room(1);
    this.buf[this.n++] = x;
  }

  bytes(b) {
    this.room(b.length);
    this.buf.set(b, this.n);
    this.n += b.length;
  }
}

const utf8 = new TextEncoder();

function header(w, len, fix, fixMax, c16, c32, c8 = null) {
  if (len <= fixMax) w.byte(fix | len);
  else if (c8 !== null && len <= 0xff) { w.byte(c8); w.byte(len); }
  else if (len <= 0xffff) { w.room(3); w.buf[w.n++] = c16; w.v.setUint16(w.n, len); w.n += 2; }
  else { w.room(5); w.buf[w.n++] = c32; w.v.setUint32(w.n, len); w.n += 4; }
}

function writeInt(w, x) {
  if (typeof x === "bigint") {
    w.room(9);
    if (x >= 0n) { w.buf[w.n++] = 0xcf; w.v.setBigUint64(w.n, x); } else { w.buf[w.n++] = 0xd3; w.v.setBigInt64(w.n, x); }
    w.n += 8;
    return;
  }
  if (x >= 0) {
    if (x <= 0x7f) w.byte(x);
    else if (x <= 0xff) { w.byte(0xcc); w.byte(x); }
    else if (x <= 0xffff) { w.room(3); w.buf[w.n++] = 0xcd; w.v.setUint16(w.n, x); w.n += 2; }
    else if (x <= 0xffffffff) { w.room(5); w.buf[w.n++] = 0xce; w.v.setUint32(w.n, x); w.n += 4; }
    else { w.room(9); w.buf[w.n++] = 0xcf; w.v.setBigUint64(w.n, BigInt(x)); w.n += 8; }
  } else if (x >= -32) w.byte(x + 0x100);
  else if (x >= -0x80) { w.room(2); w.buf[w.n++] = 0xd0; w.v.setInt8(w.n, x); w.n += 1; }
  else if (x >= -0x8000) { w.room(3); w.buf[w.n++] = 0xd1; w.v.setInt16(w.n, x); w.n += 2; }
  else if (x >= -0x80000000) { w.room(5); w.buf[w.n++] = 0xd2; w.v.setInt32(w.n, x); w.n += 4; }
  else { w.room(9); w.buf[w.n++] = 0xd3; w.v.setBigInt64(w.n, BigInt(x)); w.n += 8; }
}

function writeCanonical(w, t) {
  if (t === null || t === undefined) return w.byte(0xc0);
  if (t === true) return w.byte(0xc3);
  if (t === false) return w.byte(0xc2);
  if (typeof t === "number") {
    if (Number.isInteger(t)) return writeInt(w, t);
    w.room(9); w.buf[w.n++] = 0xcb; w.v.setFloat64(w.n, t); w.n += 8;
    return;
  }
  if (typeof t === "bigint") return writeInt(w, t);
  if (typeof t === "string") {
    const b = utf8.encode(t);
    header(w, b.length, 0xa0, 31, 0xda, 0xdb, 0xd9);
    return w.bytes(b);
  }
  if (t instanceof Uint8Array) {
    if (t.length <= 0xff) { w.byte(0xc4); w.byte(t.length); } else header(w, t.length, 0, -1, 0xc5, 0xc6);
    return w.bytes(t);
  }
  if (Array.isArray(t)) {
    header(w, t.length, 0x90, 15, 0xdc, 0xdd);
    for (const x of t) writeCanonical(w, x);
    return;
  }
  if (FLOAT in t) {
    w.room(9); w.buf[w.n++] = 0xcb; w.v.setFloat64(w.n, t[FLOAT]); w.n += 8;
    return;
  }
  // A map: a list of [key, value] pairs sorted by repr(key) (codec._normalize).
  const entries = t[MAP].map(([k, v]) => [pyRepr(k), k, v]).sort((a, b) => cmpCodePoints(a[0], b[0]));
  header(w, entries.length, 0x90, 15, 0xdc, 0xdd);
  for (const [, k, v] of entries) {
    w.byte(0x92);
    writeCanonical(w, k);
    writeCanonical(w, v);
  }
}

/** `engine.codec.canonical` of a typed tree (as `decodeTyped` returns). */
export function canonical(t) {
  const w = new Writer();
  writeCanonical(w, t);
  return w.buf.slice(0, w.n);
}

function writePlain(w, v) {
  if (v === null || v === undefined || typeof v !== "object" || v instanceof Uint8Array || Array.isArray(v)) {
    if (Array.isArray(v)) {
      header(w, v.length, 0x90, 15, 0xdc, 0xdd);
      for (const x of v) writePlain(w, x);
      return;
    }
    return writeCanonical(w, v);
  }
  const keys = Object.keys(v);
  header(w, keys.length, 0x80, 15, 0xde, 0xdf);
  for (const k of keys) {
    writeCanonical(w, k);
    writePlain(w, v[k]);
  }
}

/** Plain values -> msgpack (maps as maps; non-integer numbers as float64). */
export function encode(value) {
  const w = new Writer();
  writePlain(w, value);
  return w.buf.slice(0, w.n);
}
