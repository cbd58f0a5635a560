/**
 * HTTP polling transport: the native protocol's messages carried over REST, for when the
 * WebSocket cannot be opened (clientkit/transports/polling.py). Same connection interface,
 * so the session core does not know the difference:
 *
 * - `sub`  -> `GET /v1/events/poll?after=` in a loop (the same handler serves the
 *   seed's path `/api/events/poll`); answers become `events` messages. The wait between
 *   polls is the server's suggestion (`poll_interval_s`: short while events arrive fast,
 *   long when the log is quiet, zero when `more` is waiting), capped by `maxIntervalMs`;
 * - `ops`  -> `POST /v1/ops`; the answer is an `opacks` message;
 * - `snap` -> `GET /v1/snapshots` (manifest, then each chunk): `snapshot` messages;
 * - `ping` -> a `pong`; `ack`/`hello` need nothing; `auth` -> the token for the next
 *   requests (answered `authed`); rooms and presence wait for the WebSocket.
 *
 * While polling it probes the WebSocket every `probeIntervalMs`; when a probe connects,
 * the polling connection ends with `upgrade: true` and the client reconnects over the
 * WebSocket at once.
 */
import { fromJson, message, T } from "../protocol.js";
import { TransportError } from "./errors.js";

export class PollingConnection {
  constructor(connector, { head, maxIntervalMs, limit, probe, probeIntervalMs, path }) {
    this.kind = "poll";
    this.c = connector;
    this.maxIntervalMs = maxIntervalMs;
    this.limit = limit;
    this.probe = probe;
    this.probeIntervalMs = probeIntervalMs;
    this.path = path;
    this.handler = null;
    this.inbox = []; // messages that arrived before the caller set `onmessage`
    this.onclose = null;
    this.closed = false;
    this.sub = null; // {id, cursor, prefixes}
    this.timer = null;
    this.polling = false;
    this.polls = 0;
    this.lastInterval = null; // the last wait, in ms (the adaptive interval)
    this.nextProbe = Date.now() + probeIntervalMs;
    // The welcome: kept until the caller sets `onmessage`.
    this.deliver(message(T.WELCOME, { session: "poll", tenant: "poll", user: "poll", head }));
  }

  get onmessage() {
    return this.handler;
  }

  set onmessage(fn) {
    this.handler = fn;
    while (fn && this.inbox.length && !this.closed) fn(this.inbox.shift());
  }

  deliver(msg) {
    if (this.closed) return;
    if (this.handler) this.handler(msg);
    else this.inbox.push(msg);
  }

  async request(method, path, body = undefined) {
    if (this.closed) throw new TransportError("polling connection closed");
    let r;
    try {
      r = await this.c.fetch(this.c.baseUrl + path, {
        method,
        headers: { Authorization: `Bearer ${this.c.token}`, ...(body !== undefined ? { "Content-Type": "application/json" } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new TransportError(`poll request failed: ${e.message}`);
    }
    return r;
  }

  send(msg) {
    if (this.closed) return false;
    const run = async () => {
      switch (msg.t) {
        case T.SUB:
          this.sub = { id: msg.id, cursor: Number(msg.after) || 0, prefixes: [...(msg.prefixes || []), ...(msg.streams || [])] };
          this.schedule(0);
          break;
        case T.OPS: {
          const r = await this.request("POST", "/v1/ops", { ops: msg.ops });
          if (r.status === 200) {
            const body = await r.json();
            this.deliver(message(T.OPACKS, { id: msg.id, results: body.results }));
          } else if (r.status >= 500) {
            throw new TransportError(`ops failed with HTTP ${r.status}`, { status: r.status });
          } else {
            const body = await r.json().catch(() => ({}));
            this.deliver(message(T.ERROR, { code: String(body.code || "http_error"), message: String(body.message || r.status), ref: msg.id }));
          }
          break;
        }
        case T.SNAP:
          await this.snapshot(msg);
          break;
        case T.PING:
          this.deliver(message(T.PONG, { id: msg.id, time_us: Date.now() * 1000 }));
          break;
        case T.AUTH:
          this.c.setToken(msg.token);
          this.deliver(message(T.AUTHED, { id: msg.id, exp: 0 }));
          break;
        default:
          break; // ack, hello: nothing to do; rooms and presence: realtime only
      }
    };
    run().catch((e) => this.fail(e));
    return true;
  }

  async snapshot(msg) {
    const params = new URLSearchParams();
    for (const p of msg.prefixes || []) params.append("prefix", p);
    for (const s of msg.streams || []) params.append("stream", s);
    const r = await this.request("GET", `/v1/snapshots?${params}`);
    if (r.status !== 200) throw new TransportError(`snapshot manifest failed with HTTP ${r.status}`, { status: r.status });
    const m = await r.json();
    for (let i = 0; i < m.total; i++) {
      const p = new URLSearchParams(params);
      p.set("at", m.position);
      p.set("chunk", i);
      const c = await this.request("GET", `/v1/snapshots?${p}`);
      if (c.status !== 200) throw new TransportError(`snapshot chunk failed with HTTP ${c.status}`, { status: c.status });
      const data = new Uint8Array(await c.arrayBuffer());
      this.deliver(message(T.SNAPSHOT, { id: msg.id, index: i, total: m.total, checksum: m.checksum, data, position: m.position }));
    }
  }

  schedule(ms) {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), ms);
  }

  async tick() {
    if (this.closed || this.polling) return;
    this.polling = true;
    try {
      if (this.probe && Date.now() >= this.nextProbe) {
        this.nextProbe = Date.now() + this.probeIntervalMs;
        if (await this.probe()) {
          this.end({ code: 1000, reason: "the websocket works again", upgrade: true });
          return;
        }
      }
      let wait = this.probe ? this.probeIntervalMs : 3_600_000;
      if (this.sub) wait = await this.poll();
      this.lastInterval = wait;
      this.polling = false;
      this.schedule(Math.max(0, Math.min(wait, this.probe ? this.nextProbe - Date.now() : wait)));
    } catch (e) {
      this.polling = false;
      this.fail(e);
    }
  }

  /** One poll; returns how long to wait before the next (ms). */
  async poll() {
    const { id, cursor, prefixes } = this.sub;
    const r = await this.request("GET", `${this.path}?after=${cursor}&limit=${this.limit}`);
    if (r.status !== 200) throw new TransportError(`poll failed with HTTP ${r.status}`, { status: r.status });
    this.polls += 1;
    const body = await r.json();
    const nxt = Number(body.next);
    const events = (body.events || []).filter((e) => !prefixes.length || prefixes.some((p) => String(e.stream || "").startsWith(p)));
    if (this.sub && this.sub.id === id) this.sub.cursor = Math.max(cursor, nxt);
    if (events.length || nxt > cursor) {
      this.deliver(message(T.EVENTS, { sub: id, events: fromJson(events), next: nxt, head: Number(body.head ?? nxt) }));
    }
    if (body.more) return 0;
    const suggested = typeof body.poll_interval_s === "number" ? body.poll_interval_s * 1000 : this.maxIntervalMs;
    return Math.min(suggested, this.maxIntervalMs);
  }

  fail(e) {
    this.end({ code: 1006, reason: e.message || String(e), upgrade: false });
  }

  end(info) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    if (this.onclose) this.onclose(info);
  }

  close() {
    this.end({ code: 1000, reason: "closed by the client", upgrade: false });
  }
}

export class PollingConnector {
  /**
   * @param {string} baseUrl "http(s)://host:port" ("" in a page: its own origin)
   * @param {object} [o] {fetch, maxIntervalMs, limit, probe, probeIntervalMs, path}
   */
  constructor(baseUrl, token, { fetch = globalThis.fetch?.bind(globalThis), maxIntervalMs = 2000, limit = 1000, probe = null,
    probeIntervalMs = 5000, path = "/v1/events/poll" } = {}) {
    this.baseUrl = (baseUrl || "").replace(/\/+$/, "");
    this.token = token;
    this.fetch = fetch;
    this.maxIntervalMs = maxIntervalMs;
    this.limit = limit;
    this.probe = probe;
    this.probeIntervalMs = probeIntervalMs;
    this.path = path;
  }

  setToken(token) {
    this.token = token;
  }

  async open() {
    let r;
    try {
      r = await this.fetch(`${this.baseUrl}${this.path}?after=0&limit=1`, { headers: { Authorization: `Bearer ${this.token}` } });
    } catch (e) {
      throw new TransportError(`poll endpoint unreachable: ${e.message}`);
    }
    if (r.status !== 200) throw new TransportError(`poll endpoint answered HTTP ${r.status}`, { status: r.status });
    const head = Number((await r.json()).head || 0);
    return new PollingConnection(this, {
      head, maxIntervalMs: this.maxIntervalMs, limit: this.limit, probe: this.probe, probeIntervalMs: this.probeIntervalMs, path: this.path,
    });
  }
}
