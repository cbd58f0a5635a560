/**
 * The session core: a sans-I/O state machine for one client (clientkit/core.py, rule for rule).
 *
 * No socket, no timer, no clock, no global randomness: time arrives as `nowMs`
 * arguments and randomness through an injected `random()` function. Every method
 * returns a list of outputs (frames to send, events applied, state changes,
 * conflicts...) for the caller to carry out; the core performs nothing itself. The
 * client shell (client.js) is one such caller; tests are another.
 *
 * States: offline -> connecting (`connect`) -> online (`welcome`) -> resyncing
 * (`refresh`: too far behind) -> online (snapshot installed); any disconnect -> offline,
 * and with `autoReconnect` a `tick` past the backoff deadline connects again.
 * - connecting has a deadline (`handshakeTimeoutMs`): no `welcome` in time is a disconnect;
 * - on `welcome` the core subscribes from its last applied position (resume from a
 *   cursor), re-joins its rooms and sends queued ops, in order, in batches;
 * - ops are sent only while online; an op leaves the queue when its result arrives; on a
 *   disconnect every unanswered op goes again on the next connection (the server answers
 *   `duplicate` for those it had committed: the op id is the idempotency key);
 * - an `error` whose `ref` is our subscription id: subscribe again after a backoff;
 * - a `clock_skew` rejection: adopt the server's clock and stamp the op again, once.
 *
 * Outputs are plain objects with a `type`:
 *   send {msg} | connect {attempt} | disconnect {reason} | state {old, new}
 *   events {events, position} | progress {position, head} | opResult {opId, kind, result}
 *   conflict {conflict} | snapshotCorrupt {attempt, error} | snapshotInstalled {position, droppedOps}
 *   presence {room, user, state} | message {msg} | serverError {msg} | authed {msg}
 */
import { hlcCmp, hlcDecode, hlcEncode, hlcReceive, hlcSend, vcFromWire, vcIncrement, vcMerge, vcToWire } from "./clocks.js";
import { message, T } from "./protocol.js";
import { MemoryStore, OpQueue } from "./queue.js";
import { RecordsReplica } from "./replica.js";
import { assembleSnapshot, SnapshotChecksumMismatch } from "./snapshot.js";

export const State = Object.freeze({ OFFLINE: "offline", CONNECTING: "connecting", ONLINE: "online", RESYNCING: "resyncing" });

const TRANSITIONS = new Map([
  ["offline/connect", "connecting"],
  ["connecting/welcome", "online"],
  ["connecting/disconnected", "offline"],
  ["online/refresh", "resyncing"],
  ["online/disconnected", "offline"],
  ["resyncing/snapshot_installed", "online"],
  ["resyncing/disconnected", "offline"],
]);

const ACCEPTED = new Set(["applied", "merged", "conflict", "duplicate"]);

export class LocalProtocolError extends Error {
  constructor(message) {
    super(message);
    this.code = "local_protocol_error";
  }
}

export class UnknownConflict extends Error {
  constructor(message) {
    super(message);
    this.code = "unknown_conflict";
  }
}

function randomClientId(random) {
  let s = "c";
  if (random === Math.random && globalThis.crypto && globalThis.crypto.getRandomValues) {
    for (const b of globalThis.crypto.getRandomValues(new Uint8Array(8))) s += b.toString(16).padStart(2, "0");
    return s;
  }
  for (let i = 0; i < 16; i++) s += Math.floor(random() * 16).toString(16);
  return s;
}

export class SessionCore {
  /**
   * @param {object} o
   * @param {string} o.user the token's user (ops carry it; the server checks it)
   * @param {OpQueue} [o.queue] an opened queue (OpQueue.open(store)); in memory by default
   * @param {string} [o.clientId] stable per device/browser profile; stored in the queue
   * @param {object|ResolutionConfig} [o.config] the server's resolution rules (resolution.js)
   */
  constructor({
    user, queue = null, clientId = null, random = Math.random, config = null, registry = null,
    prefixes = ["rec/"], position = 0, batchSize = 1000, maxInflight = 2, heartbeatMs = 30_000,
    staleMs = 90_000, ackTimeoutMs = 30_000, backoffBaseMs = 250, backoffMaxMs = 30_000, autoReconnect = true,
    keepLocalOpsOnRefresh = true, snapshotAttemptsMax = 3, persistReplica = true, persistIntervalMs = 1000,
    handshakeTimeoutMs = 10_000, maxRemoteLeadMs = 300_000, subId = "main",
  }) {
    this.queue = queue || new OpQueue(new MemoryStore());
    this.random = random;
    const stored = this.queue.getMeta("client");
    if (clientId === null) clientId = stored || randomClientId(random);
    if (stored === undefined) this.queue.setMeta({ client: clientId });
    else if (stored !== clientId) throw new LocalProtocolError(`the queue belongs to client ${stored}, not ${clientId}`);
    this.clientId = clientId;
    this.user = user;
    this.replica = new RecordsReplica(config, registry);
    this.state = State.OFFLINE;
    this.position = position;
    this.head = position;
    this.prefixes = [...prefixes];
    this.subId = subId;
    Object.assign(this, {
      batchSize, maxInflight, heartbeatMs, staleMs, ackTimeoutMs, backoffBaseMs, backoffMaxMs, autoReconnect,
      keepLocalOpsOnRefresh, snapshotAttemptsMax, persistReplica, persistIntervalMs, handshakeTimeoutMs, maxRemoteLeadMs,
    });
    this.now = 0;
    const last = this.queue.getMeta("hlc");
    this.hlc = last ? hlcDecode(last) : null;
    this.opN = this.queue.getMeta("n", 0);
    this.clocks = new Map(); // stream -> our own clock on it (also in meta "vc:<stream>")
    this.inflight = new Map(); // batch id -> {ids, sentAt}
    this.sentSeq = 0;
    this.batchN = 0;
    this.attempt = 0;
    this.nextAttempt = 0;
    this.lastRx = 0;
    this.lastPing = 0;
    this.rooms = new Set();
    this.presenceState = new Map(); // our own state per room
    this.others = new Map(); // room -> Map(user -> state)
    this.snap = null;
    this.snapAttempt = 0;
    this.snapId = "";
    this.pingN = 0;
    this.savedAt = 0;
    this.handshakeDue = null;
    this.resubDue = null;
    this.resubN = 0;
    this.clockOffsetMs = 0;
    this.restamped = new Set();
    // Ops queued by an earlier run (the page was reloaded or closed): readable again.
    for (const q of this.queue.peek(0, Infinity)) this.replica.local(q.op);
    if (persistReplica) {
      // The confirmed state an earlier run saved, with its position: resume from there.
      const saved = this.queue.loadReplica();
      if (saved.position > this.position) {
        this.replica.restore(saved.records);
        this.position = this.head = saved.position;
      }
      this.replica.trackChanges();
    }
    this.savedPosition = this.position;
  }

  to(input, out) {
    const next = TRANSITIONS.get(`${this.state}/${input}`);
    if (next === undefined) return false;
    if (next !== this.state) {
      out.push({ type: "state", old: this.state, new: next });
      this.state = next;
    }
    return true;
  }

  // ------------------------------------------------------------ connection

  /** Ask for a connection now (ignores the backoff deadline). */
  connect(nowMs) {
    this.now = Math.max(this.now, nowMs);
    const out = [];
    if (this.to("connect", out)) {
      this.attempt += 1;
      this.armHandshake(nowMs);
      out.push({ type: "connect", attempt: this.attempt });
    }
    return out;
  }

  armHandshake(nowMs) {
    this.handshakeDue = this.handshakeTimeoutMs === null ? null : nowMs + this.handshakeTimeoutMs;
  }

  /** The transport is open: introduce ourselves (`welcome` completes the handshake). */
  connected(nowMs) {
    this.now = Math.max(this.now, nowMs);
    this.lastRx = this.lastPing = nowMs;
    if (this.state !== State.CONNECTING) return [];
    this.armHandshake(nowMs);
    return [{ type: "send", msg: message(T.HELLO, { client: this.clientId, resume: { [this.subId]: this.position } }) }];
  }

  disconnected(nowMs, reason = "") {
    this.now = Math.max(this.now, nowMs);
    const out = [];
    this.save(nowMs);
    if (this.to("disconnected", out)) {
      this.handshakeDue = null;
      this.resubDue = null;
      this.inflight.clear();
      this.sentSeq = 0; // every unanswered op goes again, in order
      this.snap = null;
      const delay = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** Math.min(this.attempt, 20));
      // "Full jitter": uniform in [delay/2, delay], so clients that lost one server together
      // do not come back together.
      this.nextAttempt = nowMs + Math.floor(delay / 2) + Math.floor(this.random() * (Math.floor(delay / 2) + 1));
    }
    return out;
  }

  tick(nowMs) {
    this.now = Math.max(this.now, nowMs);
    const st = this.state;
    if (st === State.OFFLINE) {
      return this.autoReconnect && nowMs >= this.nextAttempt ? this.connect(nowMs) : [];
    }
    if (st === State.CONNECTING) {
      if (this.handshakeDue === null || nowMs < this.handshakeDue) return [];
      return [{ type: "disconnect", reason: "handshake_timeout" }, ...this.disconnected(nowMs, "handshake_timeout")];
    }
    if (this.position !== this.savedPosition && nowMs - this.savedAt >= this.persistIntervalMs) this.save(nowMs);
    if (nowMs - this.lastRx > this.staleMs) {
      return [{ type: "disconnect", reason: "stale" }, ...this.disconnected(nowMs, "stale")];
    }
    const out = [];
    if (nowMs - this.lastPing >= this.heartbeatMs) {
      this.lastPing = nowMs;
      this.pingN += 1;
      out.push({ type: "send", msg: message(T.PING, { id: this.pingN }) });
    }
    if (this.resubDue !== null && nowMs >= this.resubDue && st === State.ONLINE) out.push(...this.subscribe());
    if (this.inflight.size) {
      let oldest = Infinity;
      for (const b of this.inflight.values()) oldest = Math.min(oldest, b.sentAt);
      if (nowMs - oldest > this.ackTimeoutMs) {
        // An ops batch was never answered: send everything unanswered again.
        this.inflight.clear();
        this.sentSeq = 0;
      }
    }
    out.push(...this.pump());
    return out;
  }

  /** Persist the replica's changed records with the position (throttled by the caller's ticks). */
  save(nowMs, { everything = false } = {}) {
    if (!this.persistReplica || (this.position === this.savedPosition && !everything)) return;
    this.queue.saveReplica(this.position, this.replica.export({ everything }), { reset: everything });
    this.savedPosition = this.position;
    this.savedAt = nowMs;
  }

  /** The next `nowMs` at which `tick` has something to do (null: nothing planned). */
  nextDeadline() {
    const st = this.state;
    if (st === State.OFFLINE) return this.autoReconnect ? this.nextAttempt : null;
    if (st === State.CONNECTING) return this.handshakeDue;
    let d = Math.min(this.lastPing + this.heartbeatMs, this.lastRx + this.staleMs + 1);
    if (this.resubDue !== null && st === State.ONLINE) d = Math.min(d, this.resubDue);
    for (const b of this.inflight.values()) d = Math.min(d, b.sentAt + this.ackTimeoutMs + 1);
    if (this.persistReplica && this.position !== this.savedPosition) d = Math.min(d, this.savedAt + this.persistIntervalMs);
    return d;
  }

  // ------------------------------------------------------------ user ops

  /** Write fields of a record (and delete others): queued, applied locally at once. */
  set(stream, values, nowMs, { deleteFields = [] } = {}) {
    this.now = Math.max(this.now, nowMs);
    if (typeof stream !== "string" || !stream.startsWith("rec/")) throw new TypeError("records live on rec/<collection>/<id> streams");
    const clock = vcIncrement(this.localClock(stream), this.clientId);
    const op = {
      kind: "op", op: this.nextOpId(), client: this.clientId, user: this.user, stream,
      vc: vcToWire(clock), hlc: hlcEncode(this.nextHlc(nowMs)), set: { ...values }, delete: [...deleteFields],
      base: this.replica.version(stream),
    };
    return this.enqueue(op, clock);
  }

  delete(stream, fields, nowMs) {
    return this.set(stream, {}, nowMs, { deleteFields: fields });
  }

  /**
   * Decide a manual conflict: `choice` is a version's op id, or `{custom: true, value}` for
   * a value of one's own (or `{custom: true, deleted: true}`). The decision is an op like
   * any other (queued, idempotent); its clock covers every version, so it supersedes them
   * on every replica.
   */
  resolve(conflictId, choice, nowMs, { value = undefined, custom = false, deleted = false, conflict = null } = {}) {
    this.now = Math.max(this.now, nowMs);
    // The replica's conflict, or one listed by `GET /v1/conflicts` (a record this client
    // does not follow): both carry every version with its op id and clock.
    const c = this.replica.conflict(conflictId) || (conflict ? normalizeConflict(conflict) : null);
    if (c === null || c.id !== conflictId) throw new UnknownConflict(`no open conflict ${conflictId} in the local replica`);
    let v = value;
    let del = deleted;
    if (!custom) {
      const chosen = c.versions.find((w) => w.stamp.op === choice);
      if (!chosen) throw new UnknownConflict(`${choice} is not a version of conflict ${conflictId}`);
      v = chosen.value;
      del = chosen.deleted;
    }
    let clock = this.localClock(c.stream);
    for (const w of c.versions) clock = vcMerge(clock, w.stamp.clock);
    clock = vcIncrement(clock, this.clientId);
    const op = {
      kind: "resolve", op: this.nextOpId(), client: this.clientId, user: this.user, stream: c.stream,
      vc: vcToWire(clock), hlc: hlcEncode(this.nextHlc(nowMs)), conflict: c.id, field: c.field,
      choice: custom ? "custom" : choice, value: del ? null : v ?? null, deleted: Boolean(del), base: 0,
    };
    return this.enqueue(op, clock);
  }

  enqueue(op, clock) {
    const meta = { n: this.opN + 1, hlc: op.hlc, ["vc:" + op.stream]: op.vc };
    this.queue.append([op], meta); // QueueFull propagates; nothing below has happened then
    this.opN += 1;
    this.hlc = hlcDecode(op.hlc);
    this.clocks.set(op.stream, clock);
    this.replica.local(op);
    return this.pump();
  }

  nextOpId() {
    return `${this.clientId}.${this.opN + 1}`;
  }

  nextHlc(nowMs) {
    return hlcSend(this.hlc, nowMs + this.clockOffsetMs, this.clientId);
  }

  /** The server refused `opId` with clock_skew: adopt its clock and stamp the op again (once). */
  restamp(opId, serverMs) {
    if (!Number.isInteger(serverMs) || this.restamped.has(opId)) return false;
    this.clockOffsetMs = serverMs - this.now;
    if (this.hlc !== null && this.hlc.wall > serverMs) this.hlc = null; // ran ahead with the bad clock
    const hlc = this.nextHlc(this.now);
    const q = this.queue.restamp(opId, hlcEncode(hlc), { hlc: hlcEncode(hlc) });
    if (q === null) return false;
    this.hlc = hlc;
    this.restamped.add(opId);
    this.replica.forget(opId);
    this.replica.local(q.op);
    return true;
  }

  localClock(stream) {
    let own = this.clocks.get(stream);
    if (own === undefined) {
      const stored = this.queue.getMeta("vc:" + stream);
      own = stored ? vcFromWire(stored) : {};
    }
    return vcMerge(this.replica.clock(stream), own);
  }

  // ------------------------------------------------------------ rooms and presence

  join(room) {
    this.rooms.add(room);
    return this.live() ? [{ type: "send", msg: message(T.JOIN, { room }) }] : [];
  }

  leave(room) {
    this.rooms.delete(room);
    this.presenceState.delete(room);
    this.others.delete(room);
    return this.live() ? [{ type: "send", msg: message(T.LEAVE, { room }) }] : [];
  }

  /** Typing, cursor...: ephemeral; sent again after a reconnect, dropped while offline. */
  setPresence(room, state) {
    this.presenceState.set(room, state);
    return this.live() ? [{ type: "send", msg: message(T.PRESENCE, { room, state }) }] : [];
  }

  say(room, data, msgId = null) {
    if (!this.live()) return [];
    return [{ type: "send", msg: message(T.SAY, { room, data, ...(msgId !== null ? { id: msgId } : {}) }) }];
  }

  dm(to, data, msgId = null) {
    if (!this.live()) return [];
    return [{ type: "send", msg: message(T.DM, { to, data, ...(msgId !== null ? { id: msgId } : {}) }) }];
  }

  /** A new token for the live connection (in-band refresh); nothing when offline. */
  auth(token, id) {
    return this.live() ? [{ type: "send", msg: message(T.AUTH, { token, id }) }] : [];
  }

  othersIn(room) {
    return Object.fromEntries(this.others.get(room) || []);
  }

  live() {
    return this.state === State.ONLINE || this.state === State.RESYNCING;
  }

  // ------------------------------------------------------------ incoming

  /** One server message (decoded). */
  receive(msg, nowMs) {
    this.now = Math.max(this.now, nowMs);
    this.lastRx = nowMs;
    const h = HANDLERS[msg.t];
    return h ? h.call(this, msg) : []; // unknown types are ignored (forward compatible)
  }

  onWelcome(msg) {
    const out = [];
    if (!this.to("welcome", out)) return out;
    this.handshakeDue = null;
    this.attempt = 0;
    this.head = Math.max(this.head, Number(msg.head) || 0);
    if (typeof msg.heartbeat_s === "number" && msg.heartbeat_s > 0) this.heartbeatMs = Math.floor(msg.heartbeat_s * 1000);
    out.push(...this.subscribe());
    for (const room of [...this.rooms].sort()) {
      out.push({ type: "send", msg: message(T.JOIN, { room }) });
      if (this.presenceState.has(room)) out.push({ type: "send", msg: message(T.PRESENCE, { room, state: this.presenceState.get(room) }) });
    }
    out.push(...this.pump());
    return out;
  }

  onEvents(msg) {
    if (msg.sub !== this.subId || this.state === State.OFFLINE) return [];
    const pos = this.position;
    const raw = Array.isArray(msg.events) ? msg.events : [];
    // Exactly once: events at or before our position (a batch sent again) are skipped.
    const events = [];
    let last = pos;
    let latest = null;
    for (const e of raw) {
      const p = e && typeof e === "object" ? Number(e.position) : NaN;
      if (!(p > pos)) continue;
      events.push(e);
      if (p > last) last = p;
      const ts = e.clock && typeof e.clock.hlc === "string" ? e.clock.hlc : null;
      if (ts !== null && (latest === null || ts > latest)) latest = ts;
    }
    const out = [];
    this.resubN = 0;
    if (events.length) {
      for (const c of this.replica.applyWireEvents(events)) out.push({ type: "conflict", conflict: c });
      if (latest !== null) {
        try {
          const remote = hlcDecode(latest);
          const next = hlcReceive(this.hlc, remote, this.now + this.clockOffsetMs, this.clientId, this.maxRemoteLeadMs);
          if (this.hlc === null || hlcCmp(next, this.hlc) > 0) this.hlc = next;
        } catch {
          // a remote clock we cannot read (or too far ahead) is not followed
        }
      }
    }
    this.position = Math.max(pos, Number(msg.next) || 0, last);
    this.head = Math.max(this.head, this.position, Number.isInteger(msg.head) ? msg.head : 0);
    if (events.length) out.push({ type: "events", events, position: this.position });
    if (this.persistReplica && this.now - this.savedAt >= this.persistIntervalMs) this.save(this.now);
    out.push({ type: "progress", position: this.position, head: this.head });
    out.push({ type: "send", msg: message(T.ACK, { sub: this.subId, upto: this.position }) });
    return out;
  }

  onOpacks(msg) {
    const entry = this.inflight.get(msg.id);
    this.inflight.delete(msg.id);
    const out = [];
    const done = [];
    for (const r of Array.isArray(msg.results) ? msg.results : []) {
      if (!r || typeof r !== "object" || typeof r.op !== "string") continue;
      const kind = String(r.kind ?? "");
      if (kind === "rejected" && r.reason === "clock_skew" && this.restamp(r.op, r.server_ms)) continue; // goes again
      done.push(r.op);
      // Rejected: the optimistic value goes away. Accepted on a stream this client does not
      // subscribe to: its event never comes back to take it out of the overlay.
      if (!ACCEPTED.has(kind) || !this.follows(this.replica.pending.get(r.op)?.stream)) this.replica.forget(r.op);
      out.push({ type: "opResult", opId: r.op, kind, result: r });
    }
    this.queue.ack(done);
    for (const id of done) this.restamped.delete(id);
    if (entry && done.length < entry.ids.length) {
      // A partial answer: whatever was not answered goes again from the queue.
      this.inflight.clear();
      this.sentSeq = 0;
    }
    if (!this.inflight.size && this.queue.size === 0) this.sentSeq = 0;
    out.push(...this.pump());
    return out;
  }

  onRefresh(msg) {
    if (msg.sub !== this.subId || this.state === State.RESYNCING) return [];
    const out = [];
    if (!this.to("refresh", out)) return out;
    this.head = Math.max(this.head, Number(msg.head) || 0);
    this.snapAttempt = 0;
    out.push(...this.askSnapshot());
    return out;
  }

  askSnapshot() {
    this.snapAttempt += 1;
    this.snap = new Map();
    this.snapId = `snap${this.snapAttempt}`;
    return [{ type: "send", msg: message(T.SNAP, { id: this.snapId, prefixes: this.prefixes }) }];
  }

  onSnapshot(msg) {
    if (this.state !== State.RESYNCING || this.snap === null || msg.id !== this.snapId) return [];
    this.snap.set(msg.index, { index: msg.index, total: msg.total, checksum: msg.checksum, data: msg.data });
    if (this.snap.size < msg.total) return [];
    const chunks = [...this.snap.values()];
    this.snap = null;
    const out = [];
    let snap;
    try {
      snap = assembleSnapshot(chunks);
    } catch (e) {
      if (!(e instanceof SnapshotChecksumMismatch)) throw e;
      // Refuse it: nothing of it is installed. Ask again, a bounded number of times.
      out.push({ type: "snapshotCorrupt", attempt: this.snapAttempt, error: e.message });
      if (this.snapAttempt >= this.snapshotAttemptsMax) {
        out.push({ type: "disconnect", reason: "snapshot_refused" }, ...this.disconnected(this.now, "snapshot_refused"));
        return out;
      }
      out.push(...this.askSnapshot());
      return out;
    }
    return out.concat(this.installSnapshot(snap.position, snap.content));
  }

  /** Install a verified snapshot (from `snap`, or fetched over REST by the shell). */
  installSnapshot(position, content) {
    const keep = this.keepLocalOpsOnRefresh;
    const dropped = keep ? 0 : this.queue.clear();
    this.replica.installSnapshot(content, { keepPending: keep });
    this.position = position;
    this.head = Math.max(this.head, position);
    this.save(this.now, { everything: true }); // the snapshot replaces the saved state, in one step
    this.inflight.clear();
    this.sentSeq = 0;
    const out = [{ type: "snapshotInstalled", position, droppedOps: dropped }];
    if (this.to("snapshot_installed", out)) {
      out.push(...this.subscribe());
      out.push(...this.pump());
    }
    return out;
  }

  onPresence(msg) {
    const { room, user } = msg;
    if (typeof room !== "string" || typeof user !== "string") return [];
    const state = msg.state ?? null;
    if (!this.others.has(room)) this.others.set(room, new Map());
    const members = this.others.get(room);
    if (msg.event === "left" || (state === null && msg.event !== "joined")) members.delete(user);
    else members.set(user, state);
    return [{ type: "presence", room, user, state }];
  }

  onJoined(msg) {
    const room = this.others.get(msg.room) || new Map();
    this.others.set(msg.room, room);
    for (const m of Array.isArray(msg.members) ? msg.members : []) {
      const u = m && typeof m === "object" ? m.user : m;
      if (typeof u === "string" && u !== this.user && !room.has(u)) room.set(u, (m && m.state) ?? null);
    }
    for (const s of Array.isArray(msg.states) ? msg.states : []) {
      if (s && typeof s.user === "string" && s.user !== this.user && s.state != null) room.set(s.user, s.state);
    }
    return [{ type: "message", msg }];
  }

  onMessage(msg) {
    return [{ type: "message", msg }];
  }

  onError(msg) {
    const ref = msg.ref ?? msg.id;
    if (typeof ref === "string" && this.inflight.has(ref)) {
      // The batch failed as a whole: send it (and what followed) again later.
      this.inflight.clear();
      this.sentSeq = 0;
    } else if (ref === this.subId && this.state !== State.OFFLINE) {
      // The server ended the subscription: subscribe again after a backoff.
      const delay = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** Math.min(this.resubN, 20));
      this.resubN += 1;
      this.resubDue = this.now + delay;
    }
    return [{ type: "serverError", msg }];
  }

  onBye(msg) {
    return [{ type: "disconnect", reason: String(msg.code ?? "bye") }];
  }

  onAuthed(msg) {
    return [{ type: "authed", msg }];
  }

  /** Whether the subscription covers `stream` (its events come back to this client). */
  follows(stream) {
    return stream === undefined || this.prefixes.some((p) => stream.startsWith(p));
  }

  subscribe() {
    this.resubDue = null;
    return [{ type: "send", msg: message(T.SUB, { id: this.subId, prefixes: this.prefixes, after: this.position }) }];
  }

  // ------------------------------------------------------------ sending ops

  pump() {
    if (this.state !== State.ONLINE) return [];
    const out = [];
    while (this.inflight.size < this.maxInflight) {
      const batch = this.queue.peek(this.sentSeq, this.batchSize);
      if (!batch.length) break;
      this.batchN += 1;
      const id = `b${this.batchN}`;
      this.inflight.set(id, { ids: batch.map((q) => q.op.op), sentAt: this.now });
      this.sentSeq = batch[batch.length - 1].seq;
      out.push({ type: "send", msg: message(T.OPS, { id, ops: batch.map((q) => q.op) }) });
    }
    return out;
  }

  // ------------------------------------------------------------ status

  get pendingOps() {
    return this.queue.size;
  }

  /** For a status line: "online", "offline", "reconnecting…" or "resyncing…". */
  get status() {
    if (this.state === State.ONLINE) return "online";
    if (this.state === State.RESYNCING) return "resyncing…";
    if (this.state === State.CONNECTING || (this.autoReconnect && this.attempt > 0)) return "reconnecting…";
    return "offline";
  }

  get(stream) {
    return this.replica.get(stream);
  }
}

/**
 * A conflict as `GET /v1/conflicts` lists it (the `conflict.detected` payload: `{conflict,
 * stream, field, held, versions: [{op, client, user, hlc, vc, value, deleted}]}`) in the
 * replica's shape; a replica conflict passes through.
 */
export function normalizeConflict(c) {
  if (c.id && c.versions?.every((v) => v.stamp)) return c;
  const versions = (c.versions || []).map((v) => ({
    stamp: { op: v.op, client: v.client, user: v.user, hlc: hlcDecode(v.hlc), clock: vcFromWire(v.vc || {}) },
    value: v.value ?? null, deleted: Boolean(v.deleted),
  }));
  return { id: c.conflict, stream: c.stream, field: c.field, versions, held: versions.find((v) => v.stamp.op === c.held) || versions[0] };
}

const HANDLERS = {
  [T.WELCOME]: SessionCore.prototype.onWelcome,
  [T.EVENTS]: SessionCore.prototype.onEvents,
  [T.OPACKS]: SessionCore.prototype.onOpacks,
  [T.REFRESH]: SessionCore.prototype.onRefresh,
  [T.SNAPSHOT]: SessionCore.prototype.onSnapshot,
  [T.PRESENCE]: SessionCore.prototype.onPresence,
  [T.JOINED]: SessionCore.prototype.onJoined,
  [T.LEFT]: SessionCore.prototype.onMessage,
  [T.MSG]: SessionCore.prototype.onMessage,
  [T.SENT]: SessionCore.prototype.onMessage,
  [T.CONFLICT]: SessionCore.prototype.onMessage,
  [T.WARN]: SessionCore.prototype.onMessage,
  [T.ERROR]: SessionCore.prototype.onError,
  [T.BYE]: SessionCore.prototype.onBye,
  [T.PONG]: () => [],
  [T.AUTHED]: SessionCore.prototype.onAuthed,
};
