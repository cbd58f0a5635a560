/**
 * `SynclineClient`: the browser shell around a `SessionCore` (clientkit/client.py).
 *
 * It owns a queue (IndexedDB in a page), a connector (WebSocket with polling fallback)
 * and the core, and carries out what the core returns: frames go to the connection,
 * listeners get events, conflicts and status changes; one timer wakes the core at its
 * next deadline. Everything runs on the page's one thread, so the core needs no locks.
 *
 *   const client = await SynclineClient.open({ url: "", token, user: "alice",
 *                                              store: new IndexedDbStore("syncline:alice") });
 *   client.on("change", ({ streams }) => render(streams));
 *   client.start();
 *   await client.set("rec/tasks/1", { title: "hello" });   // durable in IndexedDB; works offline
 */
import { normalizeConflict, SessionCore, State } from "./core.js";
import { MemoryStore, OpQueue, DEFAULT_LIMIT } from "./queue.js";
import { FallbackConnector } from "./transports/fallback.js";
import { ResolutionConfig } from "./resolution.js";
import { CLOSE } from "./protocol.js";

/** The `exp` claim of a JWT (seconds since the epoch), read without verifying it; null if none. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(part + "=".repeat((4 - (part.length % 4)) % 4)) : Buffer.from(part, "base64").toString();
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/**
 * Fetch the server's resolution rules (`GET /v1/config/resolution`); null when the
 * server does not publish them (404) or cannot be reached.
 */
export async function fetchResolution(baseUrl, token, { fetch = globalThis.fetch?.bind(globalThis), path = "/v1/config/resolution" } = {}) {
  try {
    const r = await fetch(`${(baseUrl || "").replace(/\/+$/, "")}${path}`, { headers: { Authorization: `Bearer ${token}` } });
    if (r.status !== 200) return null;
    return await r.json();
  } catch {
    return null;
  }
}

/** In a page: the window's online/offline events and navigator.onLine; elsewhere none. */
function defaultNetwork() {
  const g = globalThis;
  if (typeof g.addEventListener !== "function" || !g.navigator || typeof g.navigator.onLine !== "boolean") return null;
  return { target: g, isOnline: () => g.navigator.onLine };
}

export class SynclineClient {
  /**
   * Open the queue (loading what an earlier run left: ops, client id, replica) and build the client.
   *
   * @param {object} o
   * @param {string} o.url server base URL, e.g. "http://127.0.0.1:8000" ("" in a page served by it)
   * @param {string} o.token a JWT for `user`
   * @param {string} o.user the token's user
   * @param {() => string|Promise<string>} [o.getToken] a fresh token for the same user and tenant:
   *        asked `refreshBeforeS` before the current one expires (or half-way through a shorter
   *        life), handed to the server in-band (`auth`) and used by every reconnection
   * @param {object} [o.store] MemoryStore (default) or IndexedDbStore
   * @param {object|ResolutionConfig} [o.config] the server's resolution rules, until/unless
   *        `GET /v1/config/resolution` answers (`loadConfig: false` to skip asking)
   * @param {object} [o.connector] default FallbackConnector(url, token, {WebSocket, fetch, ...transport})
   * @param {object} [o.transport] options for the FallbackConnector (wsFailuresMax, probeIntervalMs, ...)
   */
  static async open(o) {
    const queue = await OpQueue.open(o.store || new MemoryStore(), { limit: o.queueLimit || DEFAULT_LIMIT });
    return new SynclineClient(o, queue);
  }

  constructor(o, queue) {
    const {
      url = "", token, user, getToken = null, config = null, registry = null, connector = null, WebSocket, fetch,
      transport = {}, refreshBeforeS = 60, loadConfig = true, clock = () => Date.now(), network = defaultNetwork(),
      ...coreOptions
    } = o;
    delete coreOptions.store;
    delete coreOptions.queueLimit;
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.refreshBeforeS = refreshBeforeS;
    this.queue = queue;
    this.fetch = fetch || globalThis.fetch?.bind(globalThis);
    this.connector = connector || new FallbackConnector(url, token, { WebSocket, fetch: this.fetch, ...transport });
    this.clock = clock;
    this.loadConfig = loadConfig;
    this.core = new SessionCore({ user, queue, config, registry, ...coreOptions });
    this.listeners = new Map();
    this.waiters = new Set();
    this.conn = null;
    this.transport = "none";
    this.stats = { connects: 0, wsConnects: 0, pollConnects: 0, events: 0, acked: 0, conflicts: 0, snapshots: 0,
      corruptSnapshots: 0, duplicates: 0, rejected: 0, tokenRefreshes: 0, tokenRefreshFailures: 0 };
    this.started = false;
    this.closing = false;
    this.paused = false;
    this.timer = null;
    this.refreshTimer = null;
    this.authN = 0;
    this.opening = false;
    this.network = network;
    this.netDown = false; // the browser says it is offline (navigator.onLine)
    this.netHandlers = null;
    queue.onWriteError = (e) => this.emit("error", { code: "storage_failed", message: String(e && e.message) });
  }

  // ------------------------------------------------------------ lifecycle

  /** Connect (and keep reconnecting) until `close`. */
  start() {
    if (this.started) return;
    this.started = true;
    this.watchNetwork();
    if (this.loadConfig) this.refreshConfig();
    if (!this.netDown) this.apply(this.core.connect(this.clock()));
  }

  /**
   * Follow the browser's own idea of the network (`online`/`offline` events,
   * `navigator.onLine`): offline, the connection is dropped at once and no attempt is made
   * (instead of waiting for a heartbeat to go stale, or retrying in vain); online again,
   * it connects at once. `network: null` to not follow it.
   */
  watchNetwork() {
    const n = this.network;
    if (!n || this.netHandlers) return;
    const offline = () => {
      this.netDown = true;
      this.core.autoReconnect = false;
      if (this.conn) this.conn.close(CLOSE.NORMAL, "browser offline");
      this.emit("network", { online: false });
    };
    const online = () => {
      this.netDown = false;
      this.emit("network", { online: true });
      if (this.paused || this.closing) return;
      this.core.autoReconnect = true;
      this.apply(this.core.connect(this.clock()));
    };
    this.netHandlers = { offline, online };
    n.target.addEventListener("offline", offline);
    n.target.addEventListener("online", online);
    if (n.isOnline() === false) {
      this.netDown = true;
      this.core.autoReconnect = false;
    }
  }

  /** Load the server's resolution rules now (kept when the server has none to give). */
  async refreshConfig() {
    const json = await fetchResolution(this.url, this.token, { fetch: this.fetch });
    if (json) {
      try {
        this.core.replica.setConfig(new ResolutionConfig(json, this.core.replica.registry));
        this.emit("config", { config: this.core.replica.config });
      } catch (e) {
        this.emit("error", { code: e.code || "invalid_resolution_config", message: e.message });
      }
    }
    return json;
  }

  async close() {
    this.closing = true;
    if (this.netHandlers) {
      this.network.target.removeEventListener("offline", this.netHandlers.offline);
      this.network.target.removeEventListener("online", this.netHandlers.online);
    }
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.conn) this.conn.close();
    this.core.save(this.clock());
    await this.queue.close();
  }

  /** Drop the connection and stay offline until `goOnline` (a toggle in the page, tests). */
  goOffline() {
    this.paused = true;
    this.core.autoReconnect = false;
    if (this.conn) this.conn.close();
    else this.apply(this.core.disconnected(this.clock(), "offline"));
  }

  goOnline() {
    this.paused = false;
    if (this.netDown) return; // connects when the browser is online again
    this.core.autoReconnect = true;
    this.apply(this.core.connect(this.clock()));
  }

  // ------------------------------------------------------------ the page's API

  /** Write fields (and `{deleteFields}`); resolves once the op is durable in the store. */
  set(stream, values, { deleteFields = [] } = {}) {
    this.apply(this.core.set(stream, values, this.clock(), { deleteFields }));
    this.emit("change", { streams: [stream], local: true });
    return this.queue.flush();
  }

  delete(stream, fields) {
    return this.set(stream, {}, { deleteFields: fields });
  }

  /** The record as the user sees it (confirmed values with pending ops on top). */
  get(stream) {
    return this.core.get(stream);
  }

  /** Streams known locally (confirmed or pending), optionally under a prefix. */
  streams(prefix = "") {
    return this.core.replica.streams().filter((s) => s.startsWith(prefix));
  }

  /** Queued ops not yet answered by the server, in order (the wire ops). */
  pendingOps(stream = null) {
    return this.queue.peek(0, Infinity).map((q) => q.op).filter((op) => stream === null || op.stream === stream);
  }

  get pending() {
    return this.queue.size;
  }

  /** Open manual conflicts: [{id, stream, field, versions: [{stamp, value, deleted}], held}]. */
  conflicts(stream = null) {
    return this.core.replica.conflicts(stream);
  }

  /**
   * Decide a manual conflict: `choice` is the op id of the version to keep
   * (`versions[i].stamp.op`), or `{value}` for a value of one's own, or `{deleted: true}`.
   * Sends the `resolve` op the server expects; resolves once it is durable locally.
   */
  resolve(conflictId, choice, { conflict = null } = {}) {
    const now = this.clock();
    const c = this.core.replica.conflict(conflictId) || (conflict ? normalizeConflict(conflict) : null);
    const outs = typeof choice === "string"
      ? this.core.resolve(conflictId, choice, now, { conflict: c })
      : this.core.resolve(conflictId, "custom", now, { custom: true, value: choice.value, deleted: Boolean(choice.deleted), conflict: c });
    this.apply(outs);
    this.emit("change", { streams: c ? [c.stream] : [], local: true });
    return this.queue.flush();
  }

  /**
   * The tenant's open conflicts from the server (`GET /v1/conflicts`, optionally for one
   * stream), in the replica's shape; any of them can be passed to `resolve` as `{conflict}`.
   */
  async fetchConflicts(stream = null) {
    const q = stream ? `?stream=${encodeURIComponent(stream)}` : "";
    const r = await this.fetch(`${this.url.replace(/\/+$/, "")}/v1/conflicts${q}`, { headers: { Authorization: `Bearer ${this.token}` } });
    if (r.status !== 200) throw new Error(`GET /v1/conflicts answered HTTP ${r.status}`);
    return (await r.json()).conflicts.map(normalizeConflict);
  }

  join(room) { this.apply(this.core.join(room)); }
  leave(room) { this.apply(this.core.leave(room)); }
  setPresence(room, state) { this.apply(this.core.setPresence(room, state)); }
  others(room) { return this.core.othersIn(room); }
  say(room, data, msgId = null) { this.apply(this.core.say(room, data, msgId)); }
  dm(to, data, msgId = null) { this.apply(this.core.dm(to, data, msgId)); }

  get status() {
    return this.core.status;
  }

  get state() {
    return this.core.state;
  }

  get position() {
    return this.core.position;
  }

  /** Online, nothing queued, caught up with the head we know of. */
  get synced() {
    const c = this.core;
    return c.state === State.ONLINE && this.queue.size === 0 && c.replica.pending.size === 0 && c.position >= c.head;
  }

  /**
   * Listen: "status" {status, state}, "change" {streams, local}, "events" {events},
   * "progress" {position, head}, "opResult" {opId, kind, result}, "conflict" {conflict},
   * "snapshot" {position, droppedOps}, "snapshotCorrupt" {attempt, error},
   * "presence" {room, user, state}, "message" {msg}, "error" {code, message, ...},
   * "token" {exp}, "transport" {kind}, "config" {config}, "network" {online}. Returns an unsubscribe function.
   */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  emit(name, detail) {
    const fns = this.listeners.get(name) || [];
    for (const fn of fns) {
      try {
        fn(detail);
      } catch (e) {
        console.error(`syncline listener ${name} failed`, e); // a listener never breaks the session
      }
    }
    for (const w of [...this.waiters]) w();
  }

  /** Resolve when `predicate()` holds, checked after everything the client emits (no polling loop). */
  waitFor(predicate, timeoutMs = 10_000) {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = () => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`condition not reached in time: ${String(predicate).slice(0, 120)}`));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  waitSynced(timeoutMs = 10_000) {
    return this.waitFor(() => this.synced, timeoutMs);
  }

  // ------------------------------------------------------------ the shell

  apply(outputs) {
    for (const o of outputs) {
      switch (o.type) {
        case "send":
          if (this.conn) this.conn.send(o.msg);
          break;
        case "connect":
          this.openConnection();
          break;
        case "disconnect":
          if (this.conn) this.conn.close(CLOSE.NORMAL, o.reason);
          break;
        case "state":
          this.emit("status", { status: this.core.status, state: o.new, old: o.old });
          break;
        case "events": {
          this.stats.events += o.events.length;
          this.emit("events", { events: o.events });
          const streams = [...new Set(o.events.map((e) => e.stream))];
          this.emit("change", { streams, local: false });
          break;
        }
        case "progress":
          this.emit("progress", { position: o.position, head: o.head });
          break;
        case "opResult":
          this.stats.acked += 1;
          if (o.kind === "duplicate") this.stats.duplicates += 1;
          if (o.kind === "rejected") {
            this.stats.rejected += 1;
            this.emit("change", { streams: [], local: false });
          }
          this.emit("opResult", { opId: o.opId, kind: o.kind, result: o.result });
          break;
        case "conflict":
          this.stats.conflicts += 1;
          this.emit("conflict", { conflict: o.conflict });
          break;
        case "snapshotCorrupt":
          this.stats.corruptSnapshots += 1;
          this.emit("snapshotCorrupt", { attempt: o.attempt, error: o.error });
          break;
        case "snapshotInstalled":
          this.stats.snapshots += 1;
          this.emit("snapshot", { position: o.position, droppedOps: o.droppedOps });
          this.emit("change", { streams: null, local: false });
          break;
        case "presence":
          this.emit("presence", { room: o.room, user: o.user, state: o.state });
          break;
        case "message":
          this.emit("message", { msg: o.msg });
          break;
        case "serverError":
          this.emit("error", { ...o.msg });
          break;
        case "authed":
          this.emit("token", { exp: o.msg.exp, inBand: true });
          break;
        default:
          break;
      }
    }
    this.arm();
  }

  /** One timer, at the core's next deadline (at most a second away). */
  arm() {
    if (this.closing || !this.started) return;
    clearTimeout(this.timer);
    const d = this.core.nextDeadline();
    const now = this.clock();
    const wait = d === null ? 1000 : Math.max(0, Math.min(1000, d - now));
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.closing) this.apply(this.core.tick(this.clock()));
    }, wait);
  }

  async openConnection() {
    if (this.opening || this.closing) return;
    this.opening = true;
    try {
      if (this.getToken && this.refreshDue() <= Date.now() / 1000) await this.refreshToken(); // an expired token is refused
      let conn;
      try {
        conn = await this.connector.open(this.core.clientId);
      } catch (e) {
        this.emit("error", { code: "connect_failed", message: e.message });
        this.apply(this.core.disconnected(this.clock(), e.message));
        return;
      }
      if (this.closing || this.paused || this.netDown) {
        conn.close();
        this.apply(this.core.disconnected(this.clock(), "closed"));
        return;
      }
      this.conn = conn;
      this.transport = conn.kind;
      this.stats.connects += 1;
      this.stats[conn.kind === "ws" ? "wsConnects" : "pollConnects"] += 1;
      this.emit("transport", { kind: conn.kind });
      conn.onmessage = (msg) => {
        if (this.conn === conn) this.apply(this.core.receive(msg, this.clock()));
      };
      conn.onclose = (info) => this.connectionEnded(conn, info);
      this.apply(this.core.connected(this.clock()));
      this.scheduleRefresh();
    } finally {
      this.opening = false;
    }
  }

  async connectionEnded(conn, { code, reason, upgrade }) {
    if (this.conn !== conn) return;
    this.conn = null;
    this.transport = "none";
    this.emit("transport", { kind: "none", code, reason });
    this.apply(this.core.disconnected(this.clock(), reason || String(code)));
    if (code === CLOSE.UNAUTHENTICATED && this.getToken) await this.refreshToken();
    if (upgrade && !this.paused && !this.closing) this.apply(this.core.connect(this.clock())); // back to the WebSocket at once
  }

  // ------------------------------------------------------------ tokens

  /** When to ask for the next token (seconds): `refreshBeforeS` before exp, or half-way. */
  refreshDue() {
    const exp = tokenExpiry(this.token);
    if (exp === null) return Infinity;
    const now = Date.now() / 1000;
    return exp - Math.min(this.refreshBeforeS, Math.max(0, exp - now) / 2);
  }

  async refreshToken() {
    let fresh;
    try {
      fresh = await this.getToken();
    } catch (e) {
      this.stats.tokenRefreshFailures += 1;
      this.emit("error", { code: "token_refresh_failed", message: String(e && e.message) });
      return false;
    }
    if (typeof fresh !== "string" || !fresh) {
      this.stats.tokenRefreshFailures += 1;
      return false;
    }
    if (fresh === this.token) return false;
    this.token = fresh;
    if (this.connector.setToken) this.connector.setToken(fresh);
    this.stats.tokenRefreshes += 1;
    return true;
  }

  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.getToken || this.closing) return;
    const due = this.refreshDue();
    if (due === Infinity) return;
    const ms = Math.max(50, (due - Date.now() / 1000) * 1000);
    this.refreshTimer = setTimeout(async () => {
      const conn = this.conn;
      if (await this.refreshToken()) {
        if (conn && conn === this.conn && conn.kind === "ws") { // (polling sends the new token with its next request)
          this.authN += 1;
          this.apply(this.core.auth(this.token, `auth-${this.authN}`));
        }
        this.emit("token", { exp: tokenExpiry(this.token), inBand: false });
        this.scheduleRefresh();
      } else {
        this.refreshTimer = setTimeout(() => this.scheduleRefresh(), 1000); // ask again; the session ends at exp otherwise
      }
    }, Math.min(ms, 2 ** 31 - 1));
  }
}
