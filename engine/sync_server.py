"""The simulator's server: the gateway's protocol core over an in-memory log, synchronously.

Every connection is an :class:`engine.session.ServerSession`, the same pure core the
gateway's ``/v1/ws`` runs; this module performs the sessions' effects the way the
gateway does with the store, the hub and presence, but synchronously on an in-memory
log, so a seeded simulation is reproducible and proves properties of the production
protocol::

    log = MemorySyncLog(new_id)    # store.memory_sync_log; or store.sqlite_sync_log.SqliteSyncLog(path, new_id)
    server = SyncServer(log, resolution_config, ServerConfig())
    conn, out = server.connect(Principal("acme", "alice"), now_ms)   # out: [(conn, welcome)]
    out = server.receive(conn, frame_or_message, now_ms)             # [(conn_id, message), ...]
    out = server.tick(now_ms)       # heartbeats, ack timeouts, presence TTL, subscriptions woken by appends
    out = server.disconnect(conn, now_ms)
    out = server.revoke(conn, now_ms)   # the token was revoked: bye token_revoked, 4401

A connection ends at its Principal's ``expires_ms`` (4401 token_expired) unless the client
sends ``auth`` with a new token first: the server verifies it with the ``authenticate(token,
now_ms) -> Principal`` function it was given (without one, ``auth`` is refused).

Every call returns ``list[(conn_id, message)]``: messages are ``engine.protocol``
dicts (encode them with ``encode_frame`` for a real socket). A ``bye`` message means
the server dropped that connection. Treat returned messages as read-only: event
dicts, and the event lists of batches, are shared between connections.

State is a projection of the log: record states (with the receipts that answer
duplicate ops), doc op ids, documents. "Restarting" the server is building a new
``SyncServer`` on the same log; connections, rooms and presence are ephemeral and
are gone. Ids come from ``new_id(time_ms)`` so that a seeded run is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from heapq import heappop, heappush
from typing import Any, Callable, Iterator, Protocol, Sequence

from . import protocol as P
from .access import Scopes
from .documents import CRDT_UPDATE, DOC_STREAM_PREFIX, Document
from .errors import ProtocolError, SynclineError
from .events import (
    DM_PREFIX,
    STREAM_MAX,
    STREAM_RE,
    Actor,
    NewEvent,
    RecordedEvent,
    StreamWrite,
    check_tenant,
)
from .filters import EventFilter
from .records import (
    RecordsState,
    ResolutionConfig,
    as_stream_writes,
    fold_record_events,
    outcome_wire,
    reconcile,
    record_snapshot,
)
from .records.payloads import RECORD_PATCHED, StreamEvent
from .session import (
    Close,
    CommitOps,
    CountBehind,
    Deliver,
    Identity,
    JoinRoom,
    LeaveRoom,
    ReadLog,
    Send,
    ServerSession,
    SessionConfig,
    SetPresence,
    StoreMessage,
    TakeSnapshot,
    VerifyToken,
    WaitLog,
)
from .syncdata import chunk_snapshot, snapshot_checksum

ROOM_PREFIX = "room/"
PRESENCE_JOINED = "presence.joined"
PRESENCE_LEFT = "presence.left"


# ------------------------------------------------------------------ the log port


class SyncLog(Protocol):
    """The server's log. Reads are tenant-scoped and in position order.

    Adapters (store/): ``memory_sync_log.MemorySyncLog`` and ``sqlite_sync_log.SqliteSyncLog``,
    both planned by the log kernel (engine/logkernel.py) exactly as the event store."""

    def append(self, tenant: str, writes: Sequence[StreamWrite], time_us: int) -> list[RecordedEvent]:
        """Atomically append; the recorded events in position order. A wrong
        ``expected_version`` raises ``ConcurrencyError`` and writes nothing."""
        ...

    def read(self, tenant: str, after: int, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` events of ``tenant`` with position > ``after``."""
        ...

    def count_after(self, tenant: str, after: int) -> int: ...

    def head(self) -> int:
        """The store-wide last position (0 when empty)."""
        ...

    def replay(self) -> Iterator[RecordedEvent]:
        """Every event, in position order, for rebuilding state."""
        ...

    def log_hash(self) -> str:
        """sha256 over (position, row hash) of every event: equal logs, equal hashes."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ the server


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is: what a verified token said (the gateway verifies it)."""

    tenant: str
    user: str
    roles: tuple[str, ...] = ()
    perms: frozenset[str] = frozenset({"read", "write"})
    expires_ms: int | None = None  # the token's exp on the simulation's clock: the session ends then
    scopes: Scopes | None = None  # engine/access.py: None is the whole tenant


class AuthUnsupported(SynclineError):
    """An ``auth`` message reached a server built without an ``authenticate`` function."""

    code = "auth_unsupported"


# (token, now_ms) -> the Principal it names (with its expires_ms), or a SynclineError raised
Authenticate = Callable[[str, int], Principal]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    max_behind_events: int = 10_000
    batch_events_max: int = 256
    window_batches_max: int = 4
    ack_timeout_ms: int = 2_000
    stale_ms: int = 90_000
    heartbeat_ms: int = 30_000
    presence_ttl_ms: int = 30_000
    snapshot_chunk_bytes: int = 64 * 1024
    log_presence: bool = True  # record joins and leaves as presence.* events on room/<id>
    rate_limit_messages: int = 1_000_000  # (simulated clients are not throttled unless asked)

    def session(self) -> SessionConfig:
        return SessionConfig(
            heartbeat_ms=self.heartbeat_ms, stale_ms=self.stale_ms, batch_events_max=self.batch_events_max,
            window_batches_max=self.window_batches_max, ack_timeout_ms=self.ack_timeout_ms,
            max_behind=self.max_behind_events, presence_ttl_ms=self.presence_ttl_ms,
            rate_limit_messages=self.rate_limit_messages,
        )


@dataclass(slots=True)
class _Conn:
    id: int
    principal: Principal
    session: ServerSession
    waiting: dict[str, int] = field(default_factory=dict)  # sub id -> generation, waiting for the log to grow
    armed: int | None = None  # the deadline this connection has in the server's timer heap


Out = list[tuple[int, dict[str, Any]]]


class SyncServer:
    """Many :class:`~engine.session.ServerSession` (the gateway's protocol core) over one
    in-memory log, their effects performed synchronously: what the gateway does with the
    store, the hub and presence, done here with plain dicts."""

    def __init__(
        self,
        log: SyncLog,
        resolution: ResolutionConfig,
        config: ServerConfig = ServerConfig(),
        *,
        keep_documents: bool = True,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.log = log
        self.authenticate = authenticate  # verifies in-band ``auth`` tokens (docs/protocol.md)
        self.resolution = resolution
        self.config = config
        self.session_config = config.session()
        self.keep_documents = keep_documents
        self._conns: dict[int, _Conn] = {}
        self._next_conn = 1
        self._records: dict[str, RecordsState] = {}
        self._doc_ops: dict[str, dict[str, None]] = {}  # tenant -> doc op ids in the log
        self._docs: dict[tuple[str, str], Document] = {}
        self._rooms: dict[tuple[str, str], dict[int, None]] = {}
        # (tenant, room) -> conn -> (expiry, state): typing, cursors (ephemeral, with a TTL)
        self._presence: dict[tuple[str, str], dict[int, tuple[int, Any]]] = {}
        self._users: dict[tuple[str, str], dict[int, None]] = {}
        self._by_tenant: dict[str, dict[int, None]] = {}
        self._dirty: dict[str, None] = {}
        self._keys: dict[tuple[str, str], int] = {}  # (tenant, idempotency key) -> position (messages)
        self._wire: dict[int, dict] = {}
        self._timers: list[tuple[int, int, int]] = []  # (due ms, seq, connection): see tick
        self._timer_seq = 0
        # (tenant, cursor, filter) -> (raw events, next_after, wire list, head checked at, raw count): see _read
        self._batches: dict[tuple, tuple[list, int, list, int, int]] = {}
        self._wires_of: dict[int, list] = {}  # id(a shared raw list) -> its wire list
        self.stats = {"ops": 0, "duplicates": 0, "rejected": 0, "events_sent": 0, "refreshes": 0, "rewinds": 0}
        self._rebuild()

    # ---- state from the log

    def _rebuild(self) -> None:
        """Records, doc op ids and documents: a fold over the whole log."""
        batch: dict[str, list[RecordedEvent]] = {}
        for ev in self.log.replay():
            self._absorb(ev, batch)
        for tenant, evs in batch.items():
            self._records[tenant] = fold_record_events(self.records(tenant), evs, self.resolution.registry)

    def _absorb(self, ev: RecordedEvent, record_batch: dict[str, list[RecordedEvent]]) -> None:
        if ev.type == RECORD_PATCHED:
            record_batch.setdefault(ev.tenant, []).append(ev)
        elif ev.type == CRDT_UPDATE and ev.stream.startswith(DOC_STREAM_PREFIX):
            op = ev.meta.get("op") if ev.meta else None
            if op:
                self._doc_ops.setdefault(ev.tenant, {})[op] = None
            if self.keep_documents:
                doc = self._docs.get((ev.tenant, ev.stream))
                if doc is None:
                    doc = self._docs[(ev.tenant, ev.stream)] = Document(ev.stream)
                doc.apply_update(ev.data, position=ev.position, version=ev.version, time_us=ev.time_us)

    def records(self, tenant: str) -> RecordsState:
        """The server's projection of a tenant's records (what replicas must converge to)."""
        return self._records.get(tenant) or RecordsState()

    def document(self, tenant: str, stream: str) -> Document | None:
        return self._docs.get((tenant, stream))

    def documents(self, tenant: str) -> dict[str, Document]:
        return {s: d for (t, s), d in self._docs.items() if t == tenant}

    def connections(self) -> list[int]:
        return list(self._conns)

    def idle(self) -> bool:
        """Nothing left to send: no unacknowledged batch and no tenant waiting for a pump."""
        if self._dirty:
            return False
        return not any(sub.inflight for c in self._conns.values() for sub in c.session.subs.values())

    # ---- the interface

    def connect(self, principal: Principal, now_ms: int) -> tuple[int, Out]:
        check_tenant(principal.tenant)
        cid = self._next_conn
        self._next_conn += 1
        session = ServerSession(Identity(principal.tenant, principal.user, principal.perms, principal.scopes),
                                self.session_config,
                                session_id=f"s{cid}", now_ms=now_ms, encode_events=self._encode,
                                expires_ms=principal.expires_ms)
        conn = _Conn(cid, principal, session)
        self._conns[cid] = conn
        self._by_tenant.setdefault(principal.tenant, {})[cid] = None
        self._users.setdefault((principal.tenant, principal.user), {})[cid] = None
        out: Out = []
        self._perform(conn, session.welcome(head=self.log.head()), now_ms, out)
        return cid, out

    def disconnect(self, conn_id: int, now_ms: int) -> Out:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        out: Out = []
        for room in list(conn.session.rooms):
            self._leave(conn, room, now_ms, out)
        self._by_tenant.get(conn.principal.tenant, {}).pop(conn_id, None)
        users = self._users.get((conn.principal.tenant, conn.principal.user))
        if users is not None:
            users.pop(conn_id, None)
        return out

    def receive(self, conn_id: int, frame: bytes | str | dict, now_ms: int) -> Out:
        conn = self._conns.get(conn_id)
        if conn is None:
            return [(conn_id, P.message(P.BYE, code="closed", reason="no such connection"))]
        out: Out = []
        try:
            if isinstance(frame, dict):
                msg = P.validate(frame, allowed=P.CLIENT_TYPES)
            else:
                msg = P.decode_frame(frame, allowed=P.CLIENT_TYPES)
        except ProtocolError as e:
            self._perform(conn, conn.session.invalid_frame(e), now_ms, out)
            return out
        self._perform(conn, conn.session.receive(msg, now_ms, wall_us=now_ms * 1000), now_ms, out)
        return out

    def revoke(self, conn_id: int, now_ms: int) -> Out:
        """The connection's token was revoked: ``bye {code: token_revoked}``, dropped (4401)."""
        conn = self._conns.get(conn_id)
        out: Out = []
        if conn is not None:
            self._perform(conn, conn.session.revoked(), now_ms, out)
        return out

    def shutdown(self, reason: str, now_ms: int) -> Out:
        """Every connection is told why (``bye {code: "shutdown"}``) and dropped (1001)."""
        out: Out = []
        for conn in list(self._conns.values()):
            self._perform(conn, conn.session.shutdown(reason), now_ms, out)
        return out

    def tick(self, now_ms: int) -> Out:
        """Heartbeats and ack timeouts of the sessions that are due, presence expiry, and
        the pump of subscriptions waiting on tenants with new events. Work is proportional
        to what is due or changed, not to the number of connections: each session's next
        deadline sits in a heap (re-armed after everything that may move it)."""
        out: Out = []
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            due, _, cid = heappop(timers)
            conn = self._conns.get(cid)
            if conn is None or conn.armed != due:
                continue  # gone, or re-armed earlier since (that entry fires instead)
            conn.armed = None
            self._perform(conn, conn.session.tick(now_ms), now_ms, out)
        for key, members in list(self._presence.items()):
            for cid, (expires, _) in list(members.items()):
                if expires <= now_ms:
                    del members[cid]
                    c = self._conns.get(cid)
                    if c is not None:
                        self._to_room(key, cid, P.message(P.PRESENCE, room=key[1], user=c.principal.user,
                                                          event="expired"), out)
        dirty, self._dirty = self._dirty, {}
        for tenant in dirty:
            for cid in list(self._by_tenant.get(tenant, ())):
                waiter = self._conns.get(cid)
                if waiter is None or not waiter.waiting:
                    continue
                waiting, waiter.waiting = waiter.waiting, {}
                for sub_id, gen in waiting.items():
                    self._perform(waiter, waiter.session.log_grew(sub_id, gen, now_ms), now_ms, out)
        return out

    # ---- effects

    def _arm(self, conn: _Conn) -> None:
        due = conn.session.next_deadline()
        if due is not None and (conn.armed is None or due < conn.armed):
            conn.armed = due
            self._timer_seq += 1
            heappush(self._timers, (due, self._timer_seq, conn.id))

    def _perform(self, conn: _Conn, effects: list, now_ms: int, out: Out) -> None:
        self._perform_all(conn, effects, now_ms, out)
        if conn.id in self._conns:
            self._arm(conn)

    def _perform_all(self, conn: _Conn, effects: list, now_ms: int, out: Out) -> None:
        todo = list(effects)
        todo.reverse()
        session = conn.session
        while todo:
            e = todo.pop()
            kind = type(e)
            more: list = []
            if kind is Send:
                if e.msg.get("t") == P.EVENTS:
                    self.stats["events_sent"] += len(e.msg["events"])
                elif e.msg.get("t") == P.REFRESH:
                    self.stats["refreshes"] += 1
                out.append((conn.id, e.msg))
            elif kind is ReadLog:
                raw, next_after, head = self._read(conn.principal.tenant, e.after, e.limit, e.filter)
                more = session.log_read(e.sub, e.gen, raw, next_after, head, now_ms)
            elif kind is WaitLog:
                conn.waiting[e.sub] = e.gen
            elif kind is CountBehind:
                too_far = self._count_behind(conn.principal.tenant, e.after, e.limit, e.filter)
                more = session.behind_counted(e.sub, e.gen, too_far, self.log.head(), now_ms)
            elif kind is CommitOps:
                more = session.ops_done(e.ref, self._commit(conn, e, now_ms), e)
            elif kind is StoreMessage:
                more = self._store_message(conn, e, now_ms)
            elif kind is Deliver:
                self._deliver(conn, e, out)
            elif kind is JoinRoom:
                more = self._join(conn, e.room, now_ms, out)
            elif kind is LeaveRoom:
                self._leave(conn, e.room, now_ms, out)
            elif kind is SetPresence:
                key = (conn.principal.tenant, e.room)
                states = self._presence.setdefault(key, {})
                if e.state is None:
                    states.pop(conn.id, None)
                else:
                    states[conn.id] = (now_ms + self.config.presence_ttl_ms, e.state)
                self._to_room(key, conn.id, P.message(P.PRESENCE, room=e.room, user=conn.principal.user,
                                                      state=e.state), out)
            elif kind is TakeSnapshot:
                position, content = self._snapshot(conn.principal.tenant, e.streams, e.prefixes)
                content = {k: v for k, v in content.items() if session.may_read(k)}  # (the access rule)
                checksum = snapshot_checksum(position, content)
                chunks = chunk_snapshot(position, content, checksum, self.config.snapshot_chunk_bytes)
                more = session.snapshot_ready(e.ref, chunks, position)
            elif kind is VerifyToken:
                try:
                    if self.authenticate is None:
                        raise AuthUnsupported("this server verifies no in-band tokens")
                    who = self.authenticate(e.token, now_ms)
                except SynclineError as err:
                    more = session.auth_failed(e.ref, err)
                else:
                    ident = Identity(who.tenant, who.user, who.perms, who.scopes)
                    more = session.reauthed(e.ref, ident, who.expires_ms, now_ms,
                                            exp=(who.expires_ms or 0) // 1000)
                    if session.who is ident:
                        conn.principal = replace(conn.principal, perms=who.perms, expires_ms=who.expires_ms,
                                                 scopes=who.scopes)
            elif kind is Close:
                if out and out[-1][0] == conn.id and out[-1][1].get("t") == P.BYE:
                    out[-1] = (conn.id, {**out[-1][1], "close": e.code})
                else:
                    out.append((conn.id, P.message(P.BYE, code=e.reason, reason=e.reason, close=e.code)))
                out.extend(self.disconnect(conn.id, now_ms))
                return
            # Rebind, Ban, SecurityEvent: nothing to keep in a simulation
            if more:
                more.reverse()
                todo.extend(more)

    def _count_behind(self, tenant: str, after: int, limit: int, f: EventFilter | None) -> bool:
        """More than ``limit`` events matching ``f`` after ``after``? (As the gateway counts.)"""
        if self.log.count_after(tenant, after) <= limit:
            return False
        if f is None:
            return True
        counted, cursor = 0, after
        while True:
            page = self.log.read(tenant, cursor, 5000)
            if not page:
                return False
            counted += sum(1 for e in page if f.matches(e))
            if counted > limit:
                return True
            cursor = page[-1].position

    def _encode(self, events: Any) -> list:
        shared = self._wires_of.get(id(events))
        if shared is not None:
            return shared
        return [self._to_wire(e) for e in events]

    def _read(self, tenant: str, after: int, limit: int, f: EventFilter | None) -> tuple[list, int, int]:
        """The next page after ``after``: (the events the filter keeps, the position scanned
        up to, the head). Connections of a tenant with the same filter usually sit at the same
        cursor (all caught up), so a page is built once per (tenant, cursor, filter) and its
        event lists are shared (read-only) by their messages: the client kit's shared folds
        take a list handed to many replicas once. It stays that page while the head stays
        where it was; after an append (another tenant's, most of the time) it still is if it
        was full (later events come after it) or the tenant has nothing new past ``after``."""
        head = self.log.head()
        share = None if f is not None and f.where else (f.stream_prefixes, f.streams, f.types) if f else ()
        key = (tenant, after, limit, share) if share is not None else None
        if key is not None:
            hit = self._batches.get(key)
            if hit is not None and (hit[3] == head or hit[4] >= limit or self.log.count_after(tenant, after) == hit[4]):
                if hit[3] != head:
                    self._batches[key] = (hit[0], hit[1], hit[2], head, hit[4])
                # (a page that was not full still ends at the head: nothing of the tenant came since)
                return hit[0], hit[1] if hit[4] >= limit else head, head
        raw = self.log.read(tenant, after, limit)
        kept = [e for e in raw if f.matches(e)] if f is not None else list(raw)
        # As the store reads (store/sql.py read_log): a page that is not full reached the end
        # of the tenant's events, so the cursor moves to the head and the session waits for
        # the log to grow instead of reading an empty page next.
        next_after = raw[-1].position if len(raw) >= limit else head
        if key is not None:
            if len(self._batches) >= 16_384:
                self._batches.clear()  # (cursors long passed; the live ones are built again once)
                self._wires_of.clear()
            wires = [self._to_wire(e) for e in kept]
            self._batches[key] = (kept, next_after, wires, head, len(raw))
            self._wires_of[id(kept)] = wires
        return kept, next_after, head

    def _to_wire(self, e: RecordedEvent) -> dict:
        w = self._wire.get(e.position)
        if w is None:
            if len(self._wire) >= 200_000:
                self._wire.clear()
            w = self._wire[e.position] = e.to_wire()
        return w

    def _append(self, tenant: str, writes: Sequence[StreamWrite], now_ms: int) -> list[RecordedEvent]:
        recorded = self.log.append(tenant, writes, now_ms * 1000)
        if recorded:
            self._dirty[tenant] = None
        return recorded

    # ---- ops

    def _commit(self, conn: _Conn, e: CommitOps, now_ms: int) -> list[dict | None]:
        tenant = conn.principal.tenant
        results: list[dict | None] = [None] * e.size
        events: list[StreamEvent] = []
        new_state = None
        if e.records:
            r = reconcile(self.records(tenant), [op for _, op in e.records], self.resolution, now_ms=now_ms)
            for (i, _), outcome in zip(e.records, r.outcomes):
                results[i] = outcome_wire(outcome, now_ms)
                k = outcome.kind.value
                if k == "duplicate":
                    self.stats["duplicates"] += 1
                elif k == "rejected":
                    self.stats["rejected"] += 1
            events.extend(r.events)
            new_state = r.state
        doc_ops = self._doc_ops.setdefault(tenant, {})
        for d in e.docs:
            if d.op_id in doc_ops:
                self.stats["duplicates"] += 1
                results[d.index] = {"kind": "duplicate", "op": d.op_id, "stream": d.stream,
                                    "original": {"kind": "applied", "op": d.op_id}}
                continue
            doc_ops[d.op_id] = None
            events.append(StreamEvent(d.stream, NewEvent(
                CRDT_UPDATE, d.update, 1, Actor(conn.principal.user, d.client), {}, {"op": d.op_id})))
            results[d.index] = {"kind": "applied", "op": d.op_id, "stream": d.stream}
        if events:
            for ev in self._append(tenant, as_stream_writes(events), now_ms):
                if ev.type == CRDT_UPDATE:
                    self._absorb(ev, {})
        if new_state is not None:
            self._records[tenant] = new_state
        self.stats["ops"] += e.size
        return results

    # ---- snapshots

    def _snapshot(self, tenant: str, streams: tuple, prefixes: tuple) -> tuple[int, dict[str, Any]]:
        """The selected streams at the log head, in the client kit's snapshot shape:
        ``{stream: {"kind": "record", "values", "version", "conflicts", "state"} | {"kind": "doc", "state"}}``."""
        f = EventFilter(stream_prefixes=tuple(prefixes), streams=tuple(streams))
        content: dict[str, Any] = {}
        for stream, rec in self.records(tenant).records.items():
            if _selected(f, stream):
                # Values and the field state: a replica keeps merging exactly from it.
                content[stream] = record_snapshot(rec, rec.version, self.resolution.registry)
        for (t, stream), doc in self._docs.items():
            if t == tenant and _selected(f, stream):
                content[stream] = {"kind": "doc", "state": doc.encode_state()}
        return self.log.head(), content

    # ---- rooms, presence, messages

    def _join(self, conn: _Conn, room: str, now_ms: int, out: Out) -> list:
        key = (conn.principal.tenant, room)
        members = self._rooms.setdefault(key, {})
        if conn.id not in members:
            members[conn.id] = None
            self._to_room(key, conn.id, P.message(P.PRESENCE, room=room, user=conn.principal.user,
                                                  event="joined"), out)
            self._log_presence(conn, room, PRESENCE_JOINED, now_ms)
        people = sorted({(self._conns[c].principal.user, self._conns[c].session.client)
                         for c in members if c in self._conns})
        states = [{"user": self._conns[c].principal.user, "conn": self._conns[c].session.session_id, "state": st,
                   "ttl_s": round(max(0, exp - now_ms) / 1000, 3)}
                  for c, (exp, st) in self._presence.get(key, {}).items() if c in self._conns and exp > now_ms]
        return conn.session.room_joined(room, [{"user": u, "client": cl, "online": True} for u, cl in people],
                                        states)

    def _leave(self, conn: _Conn, room: str, now_ms: int, out: Out) -> None:
        key = (conn.principal.tenant, room)
        members = self._rooms.get(key)
        if members is not None and conn.id in members:
            del members[conn.id]
            if not members:
                del self._rooms[key]
            self._presence.get(key, {}).pop(conn.id, None)
            self._to_room(key, conn.id, P.message(P.PRESENCE, room=room, user=conn.principal.user,
                                                  event="left"), out)
            self._log_presence(conn, room, PRESENCE_LEFT, now_ms)

    def _log_presence(self, conn: _Conn, room: str, type_: str, now_ms: int) -> None:
        if not self.config.log_presence:
            return
        stream = ROOM_PREFIX + room
        if len(stream) > STREAM_MAX or not STREAM_RE.match(stream):
            return
        actor = Actor(conn.principal.user, conn.session.client)
        self._append(conn.principal.tenant, (StreamWrite(stream, (NewEvent(
            type_, {"user": conn.principal.user, "session": conn.session.session_id}, 1, actor),)),), now_ms)

    def _store_message(self, conn: _Conn, e: StoreMessage, now_ms: int) -> list:
        tenant = conn.principal.tenant
        if e.idempotency_key is not None and (tenant, e.idempotency_key) in self._keys:
            return conn.session.message_stored(e, self._keys[(tenant, e.idempotency_key)], True)
        actor = Actor(conn.principal.user, conn.session.client)
        try:
            recorded = self._append(tenant, (StreamWrite(e.stream, (NewEvent(e.type, e.data, 1, actor),)),), now_ms)
        except SynclineError as err:
            return conn.session.message_failed(e, err)
        position = recorded[0].position
        if e.idempotency_key is not None:
            self._keys[(tenant, e.idempotency_key)] = position
        return conn.session.message_stored(e, position, False)

    def _deliver(self, conn: _Conn, e: Deliver, out: Out) -> None:
        tenant = conn.principal.tenant
        if e.stream.startswith(ROOM_PREFIX):
            targets = self._rooms.get((tenant, e.stream[len(ROOM_PREFIX):]), ())
        else:
            targets = self._users.get((tenant, e.stream[len(DM_PREFIX):]), ())
        for cid in targets:
            target = self._conns.get(cid)
            if cid != conn.id and (target is None or target.session.admits(e.msg)):
                out.append((cid, e.msg))

    def _to_room(self, key: tuple[str, str], sender: int, msg: dict, out: Out) -> None:
        for cid in self._rooms.get(key, ()):
            if cid != sender:
                out.append((cid, msg))


def _selected(f: EventFilter, stream: str) -> bool:
    if not (f.streams or f.stream_prefixes):
        return True
    return stream in f.streams or stream.startswith(f.stream_prefixes)
