/**
 * The native protocol's vocabulary (docs/protocol.md, engine/protocol.py) and its frame
 * codecs: msgpack in binary frames (subprotocol `syncline.v1.msgpack`, the server's
 * default and the kit's: the gateway packs and unpacks it in C; in one drain benchmark run
 * each it spent 0.93 s of CPU on 10,000 ops against 1.27 s with JSON) and JSON in text frames
 * (`syncline.v1.json`, bytes as `{"$b64": "..."}`; the polling transport's REST bodies).
 * A frame of either kind decodes, whatever was negotiated.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";
export const SUBPROTOCOL_JSON = "syncline.v1.json";
export const SUBPROTOCOL_MSGPACK = "syncline.v1.msgpack";

export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  SUBSCRIPTION_FAILED: 1011,
  PROTOCOL_ERROR: 4400,
  UNAUTHENTICATED: 4401,
  FORBIDDEN: 4403,
  STALE: 4408,
  RATE_LIMITED: 4429,
  DISABLED: 4503,
});

export const T = Object.freeze({
  HELLO: "hello", PING: "ping", SUB: "sub", UNSUB: "unsub", ACK: "ack", OPS: "ops", SNAP: "snap",
  JOIN: "join", LEAVE: "leave", SAY: "say", DM: "dm", PRESENCE: "presence", AUTH: "auth",
  WELCOME: "welcome", PONG: "pong", EVENTS: "events", REFRESH: "refresh", OPACKS: "opacks",
  SNAPSHOT: "snapshot", JOINED: "joined", LEFT: "left", MSG: "msg", SENT: "sent", CONFLICT: "conflict",
  WARN: "warn", ERROR: "error", BYE: "bye", AUTHED: "authed",
});

export function message(t, fields = {}) {
  return { t, ...fields };
}

// ------------------------------------------------------------------ base64 (browser and Node)

export function bytesToBase64(bytes) {
  if (typeof Buffer !== "undefined") return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function base64ToBytes(text) {
  if (typeof Buffer !== "undefined") {
    const b = Buffer.from(text, "base64");
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** JSON value -> protocol value: `{"$b64": ...}` becomes a Uint8Array (in place, returns it). */
export function fromJson(v) {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const x = v[i];
      if (x !== null && typeof x === "object") v[i] = fromJson(x);
    }
    return v;
  }
  const b = v.$b64;
  if (typeof b === "string") {
    let n = 0;
    for (const _ in v) if (++n > 1) break;
    if (n === 1) return base64ToBytes(b);
  }
  for (const k in v) {
    const x = v[k];
    if (x !== null && typeof x === "object") v[k] = fromJson(x);
  }
  return v;
}

function replacer(_key, value) {
  return value instanceof Uint8Array ? { $b64: bytesToBase64(value) } : value;
}

const packer = new Encoder();
const unpacker = new Decoder({ maxStrLength: 4 << 20, maxBinLength: 4 << 20, maxArrayLength: 100_000, maxMapLength: 100_000 });

/** A message as a frame: a Uint8Array (msgpack, the default) or a string (`"json"`). */
export function encodeFrame(msg, codec = "msgpack") {
  return codec === "json" ? JSON.stringify(msg, replacer) : packer.encode(msg);
}

export class InvalidMessage extends Error {
  constructor(message) {
    super(message);
    this.code = "invalid_message";
  }
}

/** One server frame (text: JSON; binary: msgpack) -> a message with a string `t`, or InvalidMessage. */
export function decodeFrame(frame) {
  let msg;
  const text = typeof frame === "string";
  try {
    msg = text ? JSON.parse(frame) : unpacker.decode(frame instanceof ArrayBuffer ? new Uint8Array(frame) : frame);
  } catch (e) {
    throw new InvalidMessage(`undecodable frame: ${e.message}`);
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg) || typeof msg.t !== "string") {
    throw new InvalidMessage("a message is a map with a type `t`");
  }
  return text ? fromJson(msg) : msg;
}
