/**
 * WebSocket transport to `/v1/ws` (msgpack subprotocol by default; `codec: "json"` for
 * text frames). In the browser it uses the global
 * `WebSocket`; in Node pass one (`import { WebSocket } from "ws"`).
 *
 * A connection: `send(msg)`, `close()`, and two callbacks set by the caller,
 * `onmessage(msg)` and `onclose({code, reason, upgrade})`.
 */
import { CLOSE, decodeFrame, encodeFrame, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK } from "../protocol.js";
import { TransportError } from "./errors.js";

export function wsUrl(baseUrl) {
  let base = (baseUrl || "").replace(/\/+$/, "");
  if (!base && globalThis.location) base = globalThis.location.origin;
  return base.replace(/^http:/, "ws:").replace(/^https:/, "wss:") + "/v1/ws";
}

export class WsConnection {
  constructor(ws, codec = "msgpack") {
    this.kind = "ws";
    this.ws = ws;
    this.codec = codec;
    this.handler = null;
    this.inbox = []; // messages that arrived before the caller set `onmessage`
    this.onclose = null;
    this.skipped = 0; // server frames that did not decode (dropped)
    this.closed = false;
    this.observers = []; // fn({code, reason, byClient}) when it ends (the fallback counts failures)
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = decodeFrame(ev.data);
      } catch {
        this.skipped += 1;
        return;
      }
      if (this.handler) this.handler(msg);
      else this.inbox.push(msg);
    };
    ws.onclose = (ev) => this.ended(ev.code, ev.reason || "", false);
    ws.onerror = () => {}; // a close event follows
  }

  get onmessage() {
    return this.handler;
  }

  set onmessage(fn) {
    this.handler = fn;
    while (fn && this.inbox.length) fn(this.inbox.shift());
  }

  ended(code, reason, byClient) {
    if (this.closed) return;
    this.closed = true;
    for (const fn of this.observers) fn({ code, reason, byClient });
    if (this.onclose) this.onclose({ code, reason, upgrade: false });
  }

  send(msg) {
    if (this.closed || this.ws.readyState !== 1) return false;
    this.ws.send(encodeFrame(msg, this.codec));
    return true;
  }

  close(code = CLOSE.NORMAL, reason = "") {
    try {
      this.ws.close(code, reason);
    } catch {
      // closing a broken socket is best effort
    }
    this.ended(code, reason || "closed by the client", true);
  }
}

export class WsConnector {
  /**
   * @param {string} baseUrl "http(s)://host:port" ("" in a page: its own origin)
   * @param {string} token the JWT (sent as ?token=, browsers cannot set headers on a WebSocket)
   * @param {object} [o] {WebSocket, openTimeoutMs, url, codec: "msgpack" | "json"}
   */
  constructor(baseUrl, token, { WebSocket = globalThis.WebSocket, openTimeoutMs = 5000, url = null, codec = "msgpack" } = {}) {
    this.codec = codec;
    this.url = url || wsUrl(baseUrl);
    this.token = token;
    this.WebSocket = WebSocket;
    this.openTimeoutMs = openTimeoutMs;
  }

  setToken(token) {
    this.token = token;
  }

  /** A new open connection; rejects with TransportError. */
  open(clientId = "") {
    const WS = this.WebSocket;
    if (!WS) return Promise.reject(new TransportError("no WebSocket implementation here", { disabled: true }));
    const q = new URLSearchParams({ token: this.token, ...(clientId ? { client: clientId } : {}) });
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WS(`${this.url}?${q}`, [this.codec === "json" ? SUBPROTOCOL_JSON : SUBPROTOCOL_MSGPACK]);
        ws.binaryType = "arraybuffer";
      } catch (e) {
        reject(new TransportError(`websocket failed: ${e.message}`));
        return;
      }
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        try { ws.close(); } catch { /* best effort */ }
        reject(new TransportError("websocket open timed out"));
      }, this.openTimeoutMs);
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(new WsConnection(ws, this.codec));
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new TransportError(`websocket closed before opening (${ev.code})`, {
          closeCode: ev.code, disabled: ev.code === CLOSE.DISABLED,
        }));
      };
    });
  }
}
