"""The simulator's server: the gateway's protocol core over an in-memory log, synchronously.

Every connection is an :class:`engine.session.ServerSession`, the same pure core the
gateway's ``/v1/ws`` runs; this module performs the sessions' effects the way the
gateway does with the store, the hub and presence, but synchronously on an in-memory
log, so a seeded simulation is reproducible and proves properties of the production
protocol::

    log = MemorySyncLog(new_id)                    # or store.sqlite_sync_log.SqliteSyncLog(path, new_id)
    server = SyncServer(log, resolution_config, ServerConfig())
    conn, out = server.connect(Principal("acme", "alice"), now_ms)   # out: [(conn, welcome)]
    out = server.receive(conn, frame_or_message, now_ms)             # [(conn_id, message), ...]
    out = server.tick(now_ms)       # heartbeats, ack timeouts, presence TTL, subscriptions woken by appends
    out = server.disconnect(conn, now_ms)

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

import bisect
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from . import protocol as P
from .codec import pack, unpack
from .documents import CRDT_UPDATE, DOC_STREAM_PREFIX, Document
from .errors import ProtocolError, SynclineError, ValidationError
from .events import (
    DM_PREFIX,
    STREAM_MAX,
    STREAM_RE,
    Actor,
    NewEvent,
    RecordedEvent,
    Retention,
    StreamWrite,
    check_stream,
    check_tenant,
    check_type,
)
from .filters import EventFilter
from .hashchain import GENESIS, chain_hash
from .ids import uuid7
from .records import (
    RecordsState,
    ResolutionConfig,
    as_stream_writes,
    fold_record_events,
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
    WaitLog,
)
from .syncdata import chunk_snapshot, snapshot_checksum

ROOM_PREFIX = "room/"
PRESENCE_JOINED = "presence.joined"
PRESENCE_LEFT = "presence.left"
_EMPTY: dict = {}
_RETENTIONS = {r.value: r for r in Retention}


# ------------------------------------------------------------------ the log port


class SyncLog(Protocol):
    """The server's log. Reads are tenant-scoped and in position order."""

    def append(self, tenant: str, writes: Sequence[StreamWrite], time_us: int) -> list[RecordedEvent]:
        """Atomically append; the recorded events in position order."""
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


def encode_event(e: NewEvent) -> tuple:
    """(type, payload, clock, meta, actor user, actor client, retention), encoded as the
    store encodes them (store/rows.prepare), so both logs hash the same rows."""
    if not isinstance(e, NewEvent):
        raise ValidationError("events must be NewEvent instances")
    check_type(e.type)
    actor = e.actor or Actor()
    retention = e.retention.value if isinstance(e.retention, Retention) else str(e.retention)
    return (
        e.type, pack(e.data), pack(dict(e.clock)) if e.clock else None, pack(dict(e.meta)) if e.meta else None,
        str(actor.user)[:128], str(actor.client)[:128], retention,
    )


def row_digest(prev: bytes, event_id: str, tenant: str, stream: str, version: int, position: int,
               time_us: int, schema: int, enc: tuple) -> bytes:
    type_, payload, clock, meta, au, ac, retention = enc
    # ``event_hash``'s fields in its order, without its keyword call (one per appended event).
    return chain_hash(prev, [event_id, tenant, stream, version, position, type_, schema, time_us, au, ac,
                             clock or b"", payload, meta or b"", retention])


def recorded_from(position: int, event_id: str, tenant: str, stream: str, version: int, schema: int,
                  time_us: int, enc: tuple) -> RecordedEvent:
    """Decoded from the encoded bytes, as a store read would (tuples come back as lists)."""
    type_, payload, clock, meta, au, ac, retention = enc
    return RecordedEvent(
        event_id, tenant, stream, version, position, type_, schema, time_us, Actor(au, ac),
        unpack(clock) if clock else _EMPTY, unpack(payload), unpack(meta) if meta else _EMPTY,
        _RETENTIONS[retention],
    )


def random_event_id(time_ms: int) -> str:
    return uuid7(time_ms, os.urandom(10))


class MemorySyncLog:
    """The in-memory peer of store/sqlite_sync_log.SqliteSyncLog: same rows, same hashes."""

    def __init__(self, new_id: Callable[[int], str] = random_event_id) -> None:
        self._new_id = new_id
        self._events: list[RecordedEvent] = []
        self._hashes: list[bytes] = []
        self._by_tenant: dict[str, tuple[list[int], list[RecordedEvent]]] = {}
        self._heads: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._time_us = 0

    def append(self, tenant: str, writes: Sequence[StreamWrite], time_us: int) -> list[RecordedEvent]:
        check_tenant(tenant)
        time_us = max(time_us, self._time_us)  # commit times never go back, as in the store
        staged: list[tuple[RecordedEvent, bytes]] = []
        heads: dict[tuple[str, str], tuple[int, bytes]] = {}
        position = len(self._events)
        for w in writes:
            check_stream(w.stream)
            key = (tenant, w.stream)
            version, prev = heads.get(key) or self._heads.get(key) or (0, GENESIS)
            if w.expected_version is not None and w.expected_version != version:
                raise ValidationError(f"expected version {w.expected_version} of {w.stream}, found {version}")
            for e in w.events:
                enc = encode_event(e)
                version += 1
                position += 1
                event_id = e.id or self._new_id(time_us // 1000)
                prev = row_digest(prev, event_id, tenant, w.stream, version, position, time_us, e.schema, enc)
                staged.append((recorded_from(position, event_id, tenant, w.stream, version, e.schema, time_us, enc),
                               prev))
            heads[key] = (version, prev)
        # Nothing becomes visible before every event of the call is built: all or nothing.
        self._heads.update(heads)
        self._time_us = time_us
        positions, events = self._by_tenant.setdefault(tenant, ([], []))
        for ev, h in staged:
            self._events.append(ev)
            self._hashes.append(h)
            positions.append(ev.position)
            events.append(ev)
        return [ev for ev, _ in staged]

    def read(self, tenant: str, after: int, limit: int) -> list[RecordedEvent]:
        entry = self._by_tenant.get(tenant)
        if entry is None:
            return []
        i = bisect.bisect_right(entry[0], after)
        return entry[1][i:i + limit]

    def count_after(self, tenant: str, after: int) -> int:
        entry = self._by_tenant.get(tenant)
        return 0 if entry is None else len(entry[0]) - bisect.bisect_right(entry[0], after)

    def head(self) -> int:
        return len(self._events)

    def replay(self) -> Iterator[RecordedEvent]:
        return iter(list(self._events))

    def log_hash(self) -> str:
        h = hashlib.sha256()
        for ev, rh in zip(self._events, self._hashes):
            h.update(ev.position.to_bytes(8, "big"))
            h.update(rh)
        return h.hexdigest()

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ the server


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is: what a verified token said (the gateway verifies it)."""

    tenant: str
    user: str
    roles: tuple[str, ...] = ()
    perms: frozenset[str] = frozenset({"read", "write"})


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
    ) -> None:
        self.log = log
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
        self._presence: dict[tuple[str, str], dict[int, int]] = {}  # (tenant, room) -> conn -> expiry
        self._users: dict[tuple[str, str], dict[int, None]] = {}
        self._by_tenant: dict[str, dict[int, None]] = {}
        self._dirty: dict[str, None] = {}
        self._keys: dict[tuple[str, str], int] = {}  # (tenant, idempotency key) -> position (messages)
        self._wire: dict[int, dict] = {}
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
        session = ServerSession(Identity(principal.tenant, principal.user, principal.perms), self.session_config,
                                session_id=f"s{cid}", now_ms=now_ms, encode_events=self._encode)
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

    def shutdown(self, reason: str, now_ms: int) -> Out:
        """Every connection is told why (``bye {code: "shutdown"}``) and dropped (1001)."""
        out: Out = []
        for conn in list(self._conns.values()):
            self._perform(conn, conn.session.shutdown(reason), now_ms, out)
        return out

    def tick(self, now_ms: int) -> Out:
        """Heartbeats and ack timeouts of every session, presence expiry, and the pump of
        subscriptions waiting on tenants with new events."""
        out: Out = []
        for conn in list(self._conns.values()):
            if conn.id in self._conns:
                self._perform(conn, conn.session.tick(now_ms), now_ms, out)
        for key, members in list(self._presence.items()):
            for cid, expires in list(members.items()):
                if expires <= now_ms:
                    del members[cid]
                    c = self._conns.get(cid)
                    if c is not None:
                        self._to_room(key, cid, P.message(P.PRESENCE, room=key[1], user=c.principal.user,
                                                          event="expired"), out)
        dirty, self._dirty = self._dirty, {}
        for tenant in dirty:
            for cid in list(self._by_tenant.get(tenant, ())):
                conn = self._conns.get(cid)
                if conn is None or not conn.waiting:
                    continue
                waiting, conn.waiting = conn.waiting, {}
                for sub_id, gen in waiting.items():
                    self._perform(conn, conn.session.log_grew(sub_id, gen, now_ms), now_ms, out)
        return out

    # ---- effects

    def _perform(self, conn: _Conn, effects: list, now_ms: int, out: Out) -> None:
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
                too_far = self.log.count_after(conn.principal.tenant, e.after) > e.limit
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
                self._presence.setdefault(key, {})[conn.id] = now_ms + self.config.presence_ttl_ms
                self._to_room(key, conn.id, P.message(P.PRESENCE, room=e.room, user=conn.principal.user,
                                                      state=e.state), out)
            elif kind is TakeSnapshot:
                position, content = self._snapshot(conn.principal.tenant, e.streams, e.prefixes)
                checksum = snapshot_checksum(position, content)
                chunks = chunk_snapshot(position, content, checksum, self.config.snapshot_chunk_bytes)
                more = session.snapshot_ready(e.ref, chunks, position)
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
                return hit[0], hit[1], head
        raw = self.log.read(tenant, after, limit)
        kept = [e for e in raw if f.matches(e)] if f is not None else list(raw)
        next_after = raw[-1].position if raw else after
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
                results[i] = outcome.to_wire()
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
        users = sorted({self._conns[c].principal.user for c in members if c in self._conns})
        return conn.session.room_joined(room, [{"user": u} for u in users], [])

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
            if cid != conn.id:
                out.append((cid, e.msg))

    def _to_room(self, key: tuple[str, str], sender: int, msg: dict, out: Out) -> None:
        for cid in self._rooms.get(key, ()):
            if cid != sender:
                out.append((cid, msg))


def _selected(f: EventFilter, stream: str) -> bool:
    if not (f.streams or f.stream_prefixes):
        return True
    return stream in f.streams or stream.startswith(f.stream_prefixes)
