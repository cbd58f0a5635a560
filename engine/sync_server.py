"""The native-protocol sync server as a pure, synchronous core: messages in, messages out.

No asyncio, no sockets, no clock: the caller passes ``now_ms`` and moves the
messages. The gateway, the simulator (simulations/) and the client kit's
in-memory transport all drive the same core::

    log = MemorySyncLog(new_id)                    # or store.sqlite_sync_log.SqliteSyncLog(path, new_id)
    server = SyncServer(log, resolution_config, ServerConfig())
    conn, out = server.connect(Principal("acme", "alice"), now_ms)   # out: [(conn, welcome)]
    out = server.receive(conn, frame_or_message, now_ms)             # [(conn_id, message), ...]
    out = server.tick(now_ms)       # pump subscriptions, ack timeouts, stale connections, presence TTL
    out = server.disconnect(conn, now_ms)

Every call returns ``list[(conn_id, message)]``: messages are ``engine.protocol``
dicts (encode them with ``encode_frame`` for a real socket). ``receive`` takes a
frame (bytes: msgpack, str: JSON) or an already decoded message dict; either is
validated against the protocol. A ``bye`` message means the server dropped that
connection. Treat returned messages as read-only: event dicts, and the event lists
of batches, are shared between connections.

State is a projection of the log: record states (with the receipts that answer
duplicate ops), doc op ids, documents. "Restarting" the server is building a new
``SyncServer`` on the same log; connections, rooms and presence are ephemeral and
are gone. Ids come from ``new_id(time_ms)`` so that a seeded run is reproducible.

Rules (one connection):
- ``sub`` starts a subscription at ``after``; more than ``max_behind_events`` of the
  tenant's events after it gives ``refresh`` instead (fetch a ``snap``, sub again).
- at most ``window_batches_max`` ``events`` batches are unacknowledged per
  subscription; ``ack {upto}`` frees them. Without ack progress for ``ack_timeout_ms``
  the subscription rewinds to the last ack and sends again (lost batches, lost acks).
- ``events.prev`` is the ``next`` of the batch before it: a client whose cursor is
  below ``prev`` missed a batch and ignores this one until the rewind.
- ``ops`` are answered by one ``opacks`` with one result per op, in order.
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from . import protocol as P
from .codec import pack, unpack
from .documents import CRDT_UPDATE, DOC_STREAM_PREFIX, Document
from .errors import ProtocolError, SynclineError, ValidationError
from .events import (
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
    op_from_wire,
    reconcile,
    record_snapshot,
)
from .records.outcomes import RejectReason, rejected
from .records.payloads import RECORD_PATCHED, StreamEvent
from .syncdata import chunk_snapshot, snapshot_checksum
from .yupdates import InvalidUpdate

ROOM_PREFIX = "room/"
PRESENCE_JOINED = "presence.joined"
PRESENCE_LEFT = "presence.left"
DOC_OP = "doc"  # ops entry kind for a Yjs update (docs/protocol.md)
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


class LocalProtocolError(SynclineError):
    """The caller misused the core (for example an unknown connection id)."""

    code = "local_protocol_error"


@dataclass(slots=True)
class _Sub:
    id: str
    filter: EventFilter
    cursor: int  # scanned up to here
    sent_next: int  # ``next`` of the last batch sent: the client's cursor if nothing was lost
    acked: int
    inflight: list[int] = field(default_factory=list)  # ``next`` of unacked batches
    progress_ms: int = 0  # last time an ack moved, or the sub started
    timed: bool = False  # an ack-timeout check for it is in the server's timer heap
    # The filter as a plain tuple, for sharing batches (``_batch``); None: not shared
    # (a predicate's value may be unhashable). Hashing a tuple of str tuples is cheap.
    share_key: tuple | None = None


@dataclass(slots=True)
class _Conn:
    id: int
    principal: Principal
    session: str
    client: str
    seen_ms: int
    subs: dict[str, _Sub] = field(default_factory=dict)
    rooms: dict[str, None] = field(default_factory=dict)


Out = list[tuple[int, dict[str, Any]]]


class SyncServer:
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
        self._wire: dict[int, dict] = {}
        # (tenant, cursor, filter) -> (batch | None, its raw event count, the head it was checked at):
        # see ``_batch``.
        self._batches: dict[tuple, tuple[tuple[int, list[dict]] | None, int, int]] = {}
        # Deadlines instead of scans: ``tick`` pops what is due. (due_ms, seq, conn_id, sub):
        # sub None is the connection's stale check; otherwise that sub's ack timeout. Entries
        # are checked when popped (the connection may be gone, the sub replaced, the ack
        # moved on: then it is re-armed at the new deadline or dropped). One entry per
        # connection and one per sub with batches in flight: bounded by the connections.
        self._timers: list[tuple[int, int, int, _Sub | None]] = []
        self._timer_seq = 0
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
        return not any(sub.inflight for conn in self._conns.values() for sub in conn.subs.values())

    # ---- the interface

    def connect(self, principal: Principal, now_ms: int) -> tuple[int, Out]:
        check_tenant(principal.tenant)
        cid = self._next_conn
        self._next_conn += 1
        conn = _Conn(cid, principal, f"s{cid}", "", now_ms)
        self._conns[cid] = conn
        self._by_tenant.setdefault(principal.tenant, {})[cid] = None
        self._users.setdefault((principal.tenant, principal.user), {})[cid] = None
        self._push_timer(now_ms + self.config.stale_ms + 1, cid, None)
        welcome = P.message(
            P.WELCOME, session=conn.session, tenant=principal.tenant, user=principal.user,
            head=self.log.head(), heartbeat_s=self.config.heartbeat_ms // 1000, stale_s=self.config.stale_ms // 1000,
            max_behind=self.config.max_behind_events,
        )
        return cid, [(cid, welcome)]

    def disconnect(self, conn_id: int, now_ms: int) -> Out:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        out: Out = []
        for room in list(conn.rooms):
            self._leave(conn, room, now_ms, out, notify_self=False)
        self._by_tenant.get(conn.principal.tenant, {}).pop(conn_id, None)
        users = self._users.get((conn.principal.tenant, conn.principal.user))
        if users is not None:
            users.pop(conn_id, None)
        return out

    def receive(self, conn_id: int, frame: bytes | str | dict, now_ms: int) -> Out:
        conn = self._conns.get(conn_id)
        if conn is None:
            return [(conn_id, P.message(P.BYE, code="closed", reason="no such connection"))]
        try:
            if isinstance(frame, dict):
                msg = P.validate(frame, allowed=P.CLIENT_TYPES)
            else:
                msg = P.decode_frame(frame, allowed=P.CLIENT_TYPES)
        except ProtocolError as e:
            out = self.disconnect(conn_id, now_ms)
            out.append((conn_id, P.message(P.BYE, code=e.code, reason=str(e)[:200], close=P.CLOSE_PROTOCOL_ERROR)))
            return out
        conn.seen_ms = now_ms
        out: Out = []
        handler = _HANDLERS.get(msg["t"])
        if handler is not None:
            handler(self, conn, msg, now_ms, out)
        return out

    def tick(self, now_ms: int) -> Out:
        """Stale connections, ack timeouts, presence expiry, and the pump of tenants with
        new events. Work is proportional to what is due or changed, not to connections."""
        out: Out = []
        cfg = self.config
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            _, _, cid, sub = heapq.heappop(timers)
            conn = self._conns.get(cid)
            if conn is None:
                continue
            if sub is None:
                if now_ms - conn.seen_ms > cfg.stale_ms:
                    out.extend(self.disconnect(cid, now_ms))
                    out.append((cid, P.message(P.BYE, code="stale", reason="silent too long", close=P.CLOSE_STALE)))
                else:
                    self._push_timer(conn.seen_ms + cfg.stale_ms + 1, cid, None)
                continue
            sub.timed = False
            if conn.subs.get(sub.id) is not sub or not sub.inflight:
                continue  # replaced, dropped or caught up: re-armed when batches go out again
            if now_ms - sub.progress_ms > cfg.ack_timeout_ms:
                # Lost batches or lost acks: send again from what the client confirmed.
                self.stats["rewinds"] += 1
                sub.cursor = sub.sent_next = sub.acked
                sub.inflight.clear()
                sub.progress_ms = now_ms
                if not self._check_behind(conn, sub, out):
                    self._pump(conn, sub, now_ms, out)
            else:
                self._arm_ack(cid, sub)
        for key, members in list(self._presence.items()):
            for cid, expires in list(members.items()):
                if expires <= now_ms:
                    del members[cid]
                    conn = self._conns.get(cid)
                    if conn is not None:
                        self._to_room(key, cid, P.message(P.PRESENCE, room=key[1], user=conn.principal.user,
                                                          event="expired"), out)
        dirty, self._dirty = self._dirty, {}
        for tenant in dirty:
            for cid in self._by_tenant.get(tenant, ()):
                conn = self._conns[cid]
                for sub in conn.subs.values():
                    self._pump(conn, sub, now_ms, out)
        return out

    def _push_timer(self, due_ms: int, conn_id: int, sub: _Sub | None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due_ms, self._timer_seq, conn_id, sub))

    def _arm_ack(self, conn_id: int, sub: _Sub) -> None:
        if not sub.timed:
            sub.timed = True
            self._push_timer(sub.progress_ms + self.config.ack_timeout_ms + 1, conn_id, sub)

    # ---- subscriptions

    def _check_behind(self, conn: _Conn, sub: _Sub, out: Out) -> bool:
        if self.log.count_after(conn.principal.tenant, sub.cursor) > self.config.max_behind_events:
            self.stats["refreshes"] += 1
            del conn.subs[sub.id]
            out.append((conn.id, P.message(P.REFRESH, sub=sub.id, head=self.log.head(), reason="too_far_behind")))
            return True
        return False

    def _pump(self, conn: _Conn, sub: _Sub, now_ms: int, out: Out) -> None:
        window = self.config.window_batches_max
        inflight = sub.inflight
        if len(inflight) >= window:
            return  # a full window: nothing to send until an ack
        tenant = conn.principal.tenant
        f = sub.filter
        share_key = sub.share_key
        head = self.log.head()  # constant here: pumping appends nothing
        while len(inflight) < window:
            scanned = self._batch(tenant, sub.cursor, f, share_key, head)
            if scanned is None:
                return
            sub.cursor, wires = scanned
            if not wires:
                continue  # skipped silently; the next batch tells the client via ``next``
            if not inflight:
                sub.progress_ms = now_ms
            batch = P.message(P.EVENTS, sub=sub.id, events=wires, next=sub.cursor, prev=sub.sent_next, head=head)
            sub.sent_next = sub.cursor
            inflight.append(sub.cursor)
            if not sub.timed:
                self._arm_ack(conn.id, sub)
            self.stats["events_sent"] += len(wires)
            out.append((conn.id, batch))

    def _batch(self, tenant: str, cursor: int, f: EventFilter, share_key: tuple | None, head: int
               ) -> tuple[int, list[dict]] | None:
        """The next batch after ``cursor``: (the position scanned up to, the wire events the
        filter keeps), or None at the end of the log. Connections of a tenant with the same
        filter usually sit at the same cursor (all caught up), so a batch is built once per
        (tenant, cursor, filter) and its event list is shared by their messages (read-only,
        like the event dicts in it; the client kit's shared folds take a list handed to
        many replicas once). It stays that batch while the log head stays where it was;
        after an append (another tenant's, most of the time) it still is if it was full
        (later events come after it) or the tenant has no new event past ``cursor``."""
        key = (tenant, cursor, share_key) if share_key is not None else None
        cfg_max = self.config.batch_events_max
        if key is not None:
            hit = self._batches.get(key)
            if hit is not None:
                if hit[2] == head or hit[1] >= cfg_max:
                    return hit[0]
                if self.log.count_after(tenant, cursor) == hit[1]:
                    self._batches[key] = (hit[0], hit[1], head)
                    return hit[0]
        raw = self.log.read(tenant, cursor, cfg_max)
        scanned = (raw[-1].position, [self._to_wire(e) for e in raw if f.matches(e)]) if raw else None
        if key is not None:
            if len(self._batches) >= 16_384:
                self._batches.clear()  # (cursors long passed; the live ones are built again once)
            self._batches[key] = (scanned, len(raw), head)
        return scanned

    def _to_wire(self, e: RecordedEvent) -> dict:
        w = self._wire.get(e.position)
        if w is None:
            if len(self._wire) >= 200_000:
                self._wire.clear()
            w = self._wire[e.position] = e.to_wire()
        return w

    def _on_sub(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        if len(conn.subs) >= 64 and msg["id"] not in conn.subs:
            out.append((conn.id, P.message(P.ERROR, code="too_many_subscriptions", ref=msg["id"])))
            return
        f = EventFilter(stream_prefixes=tuple(msg.get("prefixes") or ()), streams=tuple(msg.get("streams") or ()),
                        types=tuple(msg.get("types") or ()))
        after = msg.get("after") or 0
        sub = _Sub(msg["id"], f, after, after, after, progress_ms=now_ms,
                   share_key=None if f.where else (f.stream_prefixes, f.streams, f.types))
        conn.subs[sub.id] = sub
        for room in msg.get("rooms") or ():
            self._join(conn, room, now_ms, out)
        if not self._check_behind(conn, sub, out):
            self._pump(conn, sub, now_ms, out)

    def _on_unsub(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        conn.subs.pop(msg["id"], None)

    def _on_ack(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        sub = conn.subs.get(msg["sub"])
        if sub is None:
            return
        upto = msg["upto"]
        if upto > sub.acked and upto <= sub.sent_next:
            sub.acked = upto
            sub.progress_ms = now_ms
            while sub.inflight and sub.inflight[0] <= upto:
                sub.inflight.pop(0)
            self._pump(conn, sub, now_ms, out)

    # ---- ops

    def _on_ops(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        tenant, user = conn.principal.tenant, conn.principal.user
        results: list[Any] = [None] * len(msg["ops"])
        record_ops: list[tuple[int, Any]] = []
        doc_writes: list[StreamEvent] = []
        doc_ops = self._doc_ops.setdefault(tenant, {})
        batch_doc_ops: dict[str, None] = {}
        for i, wire in enumerate(msg["ops"]):
            if isinstance(wire, dict) and wire.get("kind") == DOC_OP:
                results[i] = self._doc_op(conn, wire, doc_ops, batch_doc_ops, doc_writes)
                continue
            try:
                op = op_from_wire(wire)
            except ValidationError as e:
                oid = wire.get("op") if isinstance(wire, dict) and isinstance(wire.get("op"), str) else ""
                results[i] = rejected(oid, "", RejectReason.INVALID_OP, str(e)[:200]).to_wire()
                continue
            if op.user != user:  # a connection writes as its own user only
                results[i] = rejected(op.op_id, op.stream, RejectReason.INVALID_OP, "op user is not the caller").to_wire()
                continue
            record_ops.append((i, op))
        events: list[StreamEvent] = []
        if record_ops:
            r = reconcile(self.records(tenant), [op for _, op in record_ops], self.resolution, now_ms=now_ms)
            for (i, _), outcome in zip(record_ops, r.outcomes):
                results[i] = outcome.to_wire()
                k = outcome.kind.value
                if k == "duplicate":
                    self.stats["duplicates"] += 1
                elif k == "rejected":
                    self.stats["rejected"] += 1
            events.extend(r.events)
            new_state = r.state
        else:
            new_state = None
        events.extend(doc_writes)
        if events:
            recorded = self.log.append(tenant, as_stream_writes(events), now_ms * 1000)
            for ev in recorded:
                if ev.type == CRDT_UPDATE:
                    self._absorb(ev, {})
            self._dirty[tenant] = None
        if new_state is not None:
            self._records[tenant] = new_state
        self.stats["ops"] += len(results)
        out.append((conn.id, P.message(P.OPACKS, id=msg["id"], results=results)))

    def _doc_op(self, conn: _Conn, wire: dict, doc_ops: dict, batch_ops: dict, writes: list[StreamEvent]) -> dict:
        op_id, stream, update = wire.get("op"), wire.get("stream"), wire.get("update")
        if not isinstance(op_id, str) or not op_id or not isinstance(stream, str) \
                or not stream.startswith(DOC_STREAM_PREFIX) or len(stream) > STREAM_MAX \
                or not STREAM_RE.match(stream) or not isinstance(update, (bytes, bytearray)):
            oid = op_id if isinstance(op_id, str) else ""
            return {"kind": "rejected", "op": oid, "reason": RejectReason.INVALID_OP.value}
        if op_id in doc_ops or op_id in batch_ops:
            self.stats["duplicates"] += 1
            return {"kind": "duplicate", "op": op_id, "stream": stream, "original": {"kind": "applied", "op": op_id}}
        try:
            Document().apply_update(bytes(update))  # decodes, or the op is rejected
        except (InvalidUpdate, ValueError) as e:
            return {"kind": "rejected", "op": op_id, "reason": RejectReason.INVALID_VALUE.value,
                    "detail": str(e)[:200]}
        batch_ops[op_id] = None
        client = wire.get("client") if isinstance(wire.get("client"), str) else conn.client
        writes.append(StreamEvent(stream, NewEvent(
            CRDT_UPDATE, bytes(update), 1, Actor(conn.principal.user, client or ""), {}, {"op": op_id},
        )))
        return {"kind": "applied", "op": op_id, "stream": stream}

    # ---- snapshots

    def _on_snap(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        """The selected streams at the log head, in the client kit's snapshot shape:
        ``{stream: {"kind": "record", "values", "version", "conflicts", "state"} | {"kind": "doc", "state"}}``."""
        tenant = conn.principal.tenant
        f = EventFilter(stream_prefixes=tuple(msg.get("prefixes") or ()), streams=tuple(msg.get("streams") or ()))
        position = self.log.head()
        content: dict[str, Any] = {}
        for stream, rec in self.records(tenant).records.items():
            if _selected(f, stream):
                # Values and the field state: a replica keeps merging exactly from it.
                content[stream] = record_snapshot(rec, rec.version, self.resolution.registry)
        for (t, stream), doc in self._docs.items():
            if t == tenant and _selected(f, stream):
                content[stream] = {"kind": "doc", "state": doc.encode_state()}
        checksum = snapshot_checksum(position, content)
        for c in chunk_snapshot(position, content, checksum, self.config.snapshot_chunk_bytes):
            out.append((conn.id, P.message(P.SNAPSHOT, id=msg["id"], index=c.index, total=c.total,
                                           checksum=c.checksum, data=c.data)))

    # ---- rooms, presence, messages

    def _join(self, conn: _Conn, room: str, now_ms: int, out: Out) -> None:
        key = (conn.principal.tenant, room)
        members = self._rooms.setdefault(key, {})
        if conn.id not in members:
            members[conn.id] = None
            conn.rooms[room] = None
            self._to_room(key, conn.id, P.message(P.PRESENCE, room=room, user=conn.principal.user,
                                                  event="joined"), out)
            self._log_presence(conn, room, PRESENCE_JOINED, now_ms)
        users = sorted({self._conns[c].principal.user for c in members if c in self._conns})
        out.append((conn.id, P.message(P.JOINED, room=room, members=users)))

    def _leave(self, conn: _Conn, room: str, now_ms: int, out: Out, *, notify_self: bool = True) -> None:
        key = (conn.principal.tenant, room)
        members = self._rooms.get(key)
        if members is not None and conn.id in members:
            del members[conn.id]
            if not members:
                del self._rooms[key]
            self._presence.get(key, {}).pop(conn.id, None)
            conn.rooms.pop(room, None)
            self._to_room(key, conn.id, P.message(P.PRESENCE, room=room, user=conn.principal.user,
                                                  event="left"), out)
            self._log_presence(conn, room, PRESENCE_LEFT, now_ms)
        if notify_self:
            out.append((conn.id, P.message(P.LEFT, room=room)))

    def _log_presence(self, conn: _Conn, room: str, type_: str, now_ms: int) -> None:
        if not self.config.log_presence:
            return
        stream = ROOM_PREFIX + room
        if len(stream) > STREAM_MAX or not STREAM_RE.match(stream):
            return
        actor = Actor(conn.principal.user, conn.client)
        self.log.append(conn.principal.tenant, (StreamWrite(stream, (NewEvent(
            type_, {"user": conn.principal.user, "session": conn.session}, 1, actor),)),), now_ms * 1000)
        self._dirty[conn.principal.tenant] = None

    def _to_room(self, key: tuple[str, str], sender: int, msg: dict, out: Out) -> None:
        for cid in self._rooms.get(key, ()):
            if cid != sender:
                out.append((cid, msg))

    def _on_join(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        self._join(conn, msg["room"], now_ms, out)

    def _on_leave(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        self._leave(conn, msg["room"], now_ms, out)

    def _on_say(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        room = msg["room"]
        key = (conn.principal.tenant, room)
        if conn.id not in self._rooms.get(key, ()):
            out.append((conn.id, P.message(P.ERROR, code="not_in_room", ref=room)))
            return
        self._to_room(key, conn.id, P.message(P.MSG, room=room, **{"from": conn.principal.user},
                                              data=msg.get("data")), out)

    def _on_dm(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        m = P.message(P.MSG, direct=True, **{"from": conn.principal.user}, data=msg.get("data"))
        for cid in self._users.get((conn.principal.tenant, msg["to"]), ()):
            out.append((cid, m))

    def _on_presence(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        room = msg["room"]
        key = (conn.principal.tenant, room)
        if conn.id not in self._rooms.get(key, ()):
            out.append((conn.id, P.message(P.ERROR, code="not_in_room", ref=room)))
            return
        self._presence.setdefault(key, {})[conn.id] = now_ms + self.config.presence_ttl_ms
        self._to_room(key, conn.id, P.message(P.PRESENCE, room=room, user=conn.principal.user,
                                              state=msg.get("state")), out)

    # ---- the rest

    def _on_hello(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        if msg.get("client"):
            conn.client = msg["client"]

    def _on_ping(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        out.append((conn.id, P.message(P.PONG, id=msg.get("id"), time_us=now_ms * 1000)))

    def _on_command(self, conn: _Conn, msg: dict, now_ms: int, out: Out) -> None:
        out.append((conn.id, P.message(P.ERROR, code="websocket_forbidden",
                                       message="critical commands are REST only")))


def _selected(f: EventFilter, stream: str) -> bool:
    if not (f.streams or f.stream_prefixes):
        return True
    return stream in f.streams or stream.startswith(f.stream_prefixes)


_HANDLERS: dict[str, Callable[[SyncServer, _Conn, dict, int, Out], None]] = {
    P.HELLO: SyncServer._on_hello,
    P.PING: SyncServer._on_ping,
    P.SUB: SyncServer._on_sub,
    P.UNSUB: SyncServer._on_unsub,
    P.ACK: SyncServer._on_ack,
    P.OPS: SyncServer._on_ops,
    P.SNAP: SyncServer._on_snap,
    P.JOIN: SyncServer._on_join,
    P.LEAVE: SyncServer._on_leave,
    P.SAY: SyncServer._on_say,
    P.DM: SyncServer._on_dm,
    P.PRESENCE: SyncServer._on_presence,
    P.COMMAND: SyncServer._on_command,
}
