"""The native protocol's server side of one connection, sans I/O (in the style of h11).

:class:`ServerSession` is the only implementation of what docs/protocol.md says a
server does with a connection: permissions, subscriptions with their send window,
acks, the ack-timeout rewind and ``prev``, ``refresh`` when too far behind, per-op
validation of ``ops`` (records and Yjs documents), rooms, room and direct messages,
presence, the rate limit and the heartbeat. It reads no clock and does no I/O: it
takes a decoded message (or a tick) with the time, and returns **effects** for its
caller to perform — messages to send, a page of the log to read, ops to commit, a
message to store, a room to join, a close. When an effect has a result the caller
hands it back (``log_read``, ``ops_done``, ``message_stored``, ``room_joined`` …),
which may return more effects.

Two shells drive it: the gateway (``api/ws_native.py``, against the real store and hub)
and the simulator (``engine/sync_server.py``, against an in-memory log), so simulations
prove properties of the server that production runs.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import access
from . import protocol as P
from .errors import (
    Forbidden,
    ProtocolError,
    SynclineError,
    TenantViolation,
    TokenSubjectMismatch,
    TooManyRooms,
    ValidationError,
    WebSocketForbidden,
)
from .events import RecordedEvent, check_stream, dm_stream
from .filters import EventFilter
from .ratelimit import DEFAULT_RATE_LIMIT_MESSAGES, UNCOUNTED, SlidingWindow, Verdict
from .records import op_from_wire
from .records.outcomes import RejectReason, rejected
from .yupdates import check_update

READ, WRITE, ADMIN = "read", "write", "admin"
DOC_OP = "doc"  # an ``ops`` entry carrying a Yjs update (docs/protocol.md)
CLOSE_INTERNAL = 1011
ROOM_MESSAGE = "room.message"
DM_MESSAGE = "dm.message"

# -------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Send:
    msg: dict[str, Any]
    urgent: bool = False  # bypass the batching window (latency-critical types are urgent anyway)


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReadLog:
    """Read up to ``limit`` events of the tenant after ``after`` matching ``filter``;
    answer with :meth:`ServerSession.log_read` (same ``sub`` and ``gen``)."""

    sub: str
    gen: int
    after: int
    limit: int
    filter: EventFilter | None


@dataclass(frozen=True, slots=True)
class WaitLog:
    """Nothing new after ``after``: call :meth:`ServerSession.log_grew` once the log may
    have grown (a doorbell, or the poll interval passing)."""

    sub: str
    gen: int
    after: int


@dataclass(frozen=True, slots=True)
class CountBehind:
    """Are more than ``limit`` matching events after ``after``? Answer with
    :meth:`ServerSession.behind_counted`."""

    sub: str
    gen: int
    after: int
    limit: int
    filter: EventFilter | None


@dataclass(frozen=True, slots=True)
class DocWrite:
    """A Yjs update from ``ops``: one ``crdt.update`` event, its op id in ``meta.op``."""

    index: int
    op_id: str
    stream: str
    update: bytes
    client: str


@dataclass(frozen=True, slots=True)
class CommitOps:
    """Reconcile and append these ops (records) and document writes, atomically per the
    store's rules; answer with :meth:`ServerSession.ops_done` (one result per index)."""

    ref: str
    records: tuple[tuple[int, Any], ...]  # (index in the batch, ClientOp | ResolveOp)
    docs: tuple[DocWrite, ...]
    size: int  # the number of ops in the batch


@dataclass(frozen=True, slots=True)
class StoreMessage:
    """Append one room or direct message; answer with :meth:`ServerSession.message_stored`."""

    ref: str | None
    stream: str
    type: str
    data: dict[str, Any]
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class Deliver:
    """A stored message for the connections that should see it (room members, or every
    connection of the recipient), on every gateway, once."""

    stream: str
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JoinRoom:
    room: str  # answer with room_joined(room, members, states)


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    room: str  # the shell updates membership and announces it; the session already answered


@dataclass(frozen=True, slots=True)
class SetPresence:
    room: str
    state: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Rebind:
    """The client named itself (``hello {client}``): membership follows the new id."""

    client: str


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    ref: str
    streams: tuple[str, ...]
    prefixes: tuple[str, ...]  # answer with snapshot_ready(ref, chunks)


@dataclass(frozen=True, slots=True)
class Ban:
    until_ms: int


@dataclass(frozen=True, slots=True)
class VerifyToken:
    """An ``auth`` message: verify ``token`` and answer with :meth:`ServerSession.reauthed`
    (the identity it carries and when it expires, in the caller's milliseconds) or
    :meth:`ServerSession.auth_failed` (the verification error)."""

    ref: str | None
    token: str


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    kind: str
    details: dict[str, Any]


Effect = Any  # one of the dataclasses above

# -------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class BusRequest:
    """A bus message (``publish``, ``consume``, ``credit``, ``dack``, ``dnack``, ``extend``,
    ``unconsume``): validated by the protocol, tenant-checked and rate-limited here, and
    performed by the shell (api/bus_ws.py) against the gateway's bus and consumer sessions."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the connection is: what a verified token said."""

    tenant: str
    user: str
    perms: frozenset[str] = frozenset({READ, WRITE})
    scopes: access.Scopes | None = None  # None: the whole tenant (engine/access.py)

    def can(self, perm: str) -> bool:
        return perm in self.perms


@dataclass(frozen=True, slots=True)
class SessionConfig:
    heartbeat_ms: int = 30_000
    stale_ms: int = 90_000
    batch_window_ms: float = 100.0
    batch_events_max: int = 500
    window_batches_max: int = 8
    ack_timeout_ms: int = 10_000
    max_behind: int = 10_000
    rate_limit_messages: int = DEFAULT_RATE_LIMIT_MESSAGES
    rate_limit_window_ms: int = 60_000
    rate_limit_ban_ms: int = 60_000
    presence_ttl_ms: int = 30_000
    subs_max: int = 64
    rooms_max: int = 256
    ops_max: int = 2000


NAME_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,200}\Z")
CLIENT_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,64}\Z")


def check_room(room: Any) -> str:
    if not isinstance(room, str) or not NAME_RE.match(room):
        raise ValidationError("invalid room name", reason="invalid_room")
    return room


# -------------------------------------------------------------------- the session


@dataclass(slots=True)
class _Sub:
    id: str
    filter: EventFilter | None
    sees_all: bool  # nothing of the tenant is hidden from this caller (access.reads_everything)
    cursor: int  # read up to here
    sent_next: int  # ``next`` of the last batch sent
    acked: int
    gen: int
    inflight: deque[int] = field(default_factory=deque)  # ``next`` of each unacked batch
    busy: bool = False  # a ReadLog / WaitLog / CountBehind is outstanding
    progress_ms: int = 0  # last time an ack moved (or batches started going out)


class ServerSession:
    def __init__(self, who: Identity, config: SessionConfig, *, session_id: str, client: str = "",
                 now_ms: int, encode_events: Callable[[Sequence[RecordedEvent]], list] | None = None,
                 expires_ms: int | None = None) -> None:
        self.who = who
        # When the token ends the session (close 4401 token_expired), in the caller's ms;
        # moved by an accepted in-band ``auth``. None: no expiry (the simulator's default).
        self.expires_ms = expires_ms
        self.config = config
        self.session_id = session_id
        self.client = client or session_id
        self.subs: dict[str, _Sub] = {}
        self.resume: dict[str, int] = {}
        self.rooms: set[str] = set()
        self.closed = False
        self.last_seen_ms = now_ms
        self.limiter = SlidingWindow(config.rate_limit_messages, config.rate_limit_window_ms / 1000)
        self._gen = 0
        self._pending_results: dict[str, list[dict | None]] = {}  # ops answered here, per batch id
        self._encode = encode_events or (lambda evs: [e.to_wire() for e in evs])
        self.stats = {"events_sent": 0, "rewinds": 0, "refreshes": 0, "events_hidden": 0}

    # -- opening ----------------------------------------------------------------

    def welcome(self, *, head: int, rooms: Sequence[str] = ()) -> list[Effect]:
        """The first message, once the shell knows the head and the rooms the client is
        still a member of (membership survives reconnects). A token whose scopes do not
        cover a room's stream does not inherit it (engine/access.py)."""
        self.rooms.update(r for r in rooms if self.who.scopes is None or access.can_read(self.who, f"room/{r}"))
        c, w = self.config, self.who
        extra = {} if w.scopes is None else {"scopes": w.scopes.wire()}
        return [Send(P.message(
            P.WELCOME, session=self.session_id, tenant=w.tenant, user=w.user, head=head, client=self.client,
            perms=sorted(w.perms), rooms=sorted(self.rooms), heartbeat_s=c.heartbeat_ms / 1000,
            stale_s=c.stale_ms / 1000, batch_window_ms=c.batch_window_ms, max_behind=c.max_behind,
            rate_limit={"messages": c.rate_limit_messages, "window_s": c.rate_limit_window_ms / 1000}, **extra,
        ))]

    # -- input ------------------------------------------------------------------

    def receive(self, msg: dict[str, Any], now_ms: int, *, wall_us: int = 0) -> list[Effect]:
        """One decoded, validated client message (``protocol.decode_frame``)."""
        if self.closed:
            return []
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return self._token_ended("token_expired", "the token has expired")
        self.last_seen_ms = now_ms
        if msg["t"] not in UNCOUNTED:  # protocol upkeep (acks, pings, hello/resume) is never limited
            verdict = self.limiter.hit(now_ms / 1000)
            if verdict is not Verdict.OK:
                return self._rate_limited(verdict, now_ms)
        try:
            tenant = msg.get("tenant")
            if tenant is not None and tenant != self.who.tenant:
                raise TenantViolation("messages are scoped to the token's tenant", tenant=self.who.tenant)
            return _HANDLERS[msg["t"]](self, msg, now_ms, wall_us)
        except TenantViolation as e:
            self.closed = True
            return [SecurityEvent("cross_tenant_message", {"target": str(msg.get("tenant"))[:80],
                                                           "message_type": str(msg.get("t"))[:40]}),
                    self._error(msg.get("id"), e), Close(P.CLOSE_FORBIDDEN, e.code)]
        except ProtocolError as e:
            self.closed = True
            return [self._error(msg.get("id"), e), Close(P.CLOSE_PROTOCOL_ERROR, e.code)]
        except SynclineError as e:
            return [self._error(msg.get("id"), e)]

    def invalid_frame(self, error: ProtocolError) -> list[Effect]:
        """A frame that did not decode: error, then close 4400."""
        self.closed = True
        return [self._error(None, error), Close(P.CLOSE_PROTOCOL_ERROR, error.code)]

    def tick(self, now_ms: int) -> list[Effect]:
        """Heartbeat and ack timeouts (call it every second or so)."""
        if self.closed:
            return []
        c = self.config
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return self._token_ended("token_expired", "the token has expired")
        if now_ms - self.last_seen_ms > c.stale_ms:
            self.closed = True
            return [Send(P.message(P.BYE, code="stale", reason=f"nothing received for {c.stale_ms / 1000:g}s")),
                    Close(P.CLOSE_STALE, "stale")]
        out: list[Effect] = []
        for sub in self.subs.values():
            if sub.inflight and now_ms - sub.progress_ms > c.ack_timeout_ms:
                # Lost batches or lost acks: send again from what the client confirmed.
                self.stats["rewinds"] += 1
                sub.gen = self._next_gen()
                sub.cursor = sub.sent_next = sub.acked
                sub.inflight.clear()
                sub.busy = False
                sub.progress_ms = now_ms
                out.extend(self._pump(sub, now_ms))
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has something to do (a stale check or an ack timeout), in
        the caller's milliseconds; None once closed. A caller with many sessions ticks
        only those that are due."""
        if self.closed:
            return None
        c = self.config
        due = self.last_seen_ms + c.stale_ms + 1
        if self.expires_ms is not None:
            due = min(due, self.expires_ms)
        for sub in self.subs.values():
            if sub.inflight:
                due = min(due, sub.progress_ms + c.ack_timeout_ms + 1)
        return due

    def revoked(self) -> list[Effect]:
        """The connection's token was revoked (the shell matched a revocation): bye, 4401."""
        if self.closed:
            return []
        return self._token_ended("token_revoked", "the token was revoked")

    def reauthed(self, ref: str | None, who: Identity, expires_ms: int | None, now_ms: int, *,
                 exp: int = 0) -> list[Effect]:
        """The shell verified an ``auth`` token: it becomes the connection's if it names the
        same user and tenant (its permissions and expiry replace the old ones). ``exp``: the
        token's claim, echoed in ``authed``."""
        if self.closed:
            return []
        if who.tenant != self.who.tenant or who.user != self.who.user:
            return [self._error(ref, TokenSubjectMismatch(
                "a refreshed token must name the connection's user and tenant"))]
        if expires_ms is not None and now_ms >= expires_ms:
            return self._token_ended("token_expired", "the token has expired")
        self.who, self.expires_ms = who, expires_ms
        return [Send(P.message(P.AUTHED, id=ref, exp=max(0, int(exp))))]

    def auth_failed(self, ref: str | None, error: SynclineError) -> list[Effect]:
        """The ``auth`` token did not verify: an error; the connection keeps its token."""
        return [] if self.closed else [self._error(ref, error)]

    def _token_ended(self, code: str, reason: str) -> list[Effect]:
        self.closed = True
        return [Send(P.message(P.BYE, code=code, reason=reason)), Close(P.CLOSE_UNAUTHENTICATED, code)]

    def shutdown(self, reason: str) -> list[Effect]:
        self.closed = True
        return [Send(P.message(P.BYE, code="shutdown", reason=reason)), Close(P.CLOSE_GOING_AWAY, reason)]

    # -- results of effects ---------------------------------------------------------

    def log_read(self, sub_id: str, gen: int, events: Sequence[RecordedEvent], next_after: int, head: int,
                 now_ms: int) -> list[Effect]:
        sub = self._current(sub_id, gen)
        if sub is None:
            return []
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return self._token_ended("token_expired", "the token has expired")
        sub.busy = False
        if not sub.sees_all:  # every filter, none included: the access rule decides what is shown
            shown = access.visible(self.who, events)
            if len(shown) != len(events):
                self.stats["events_hidden"] += len(events) - len(shown)
                events = shown
        moved = next_after > sub.cursor
        sub.cursor = max(sub.cursor, next_after)
        if events:
            if not sub.inflight:
                sub.progress_ms = now_ms
            msg = P.message(P.EVENTS, sub=sub.id, events=self._encode(events), next=sub.cursor, prev=sub.sent_next,
                            head=head)
            sub.sent_next = sub.cursor
            sub.inflight.append(sub.cursor)
            self.stats["events_sent"] += len(events)
            if sub.cursor >= head:  # caught up: the next read would find nothing, wait instead
                sub.busy = True
                return [Send(msg), WaitLog(sub.id, sub.gen, sub.cursor)]
            return [Send(msg), *self._pump(sub, now_ms)]
        if moved and sub.cursor < head:
            return self._pump(sub, now_ms)  # a page of filtered-out events: read on
        sub.busy = True
        return [WaitLog(sub.id, sub.gen, sub.cursor)]

    def log_grew(self, sub_id: str, gen: int, now_ms: int) -> list[Effect]:
        sub = self._current(sub_id, gen)
        if sub is None:
            return []
        sub.busy = False
        return self._pump(sub, now_ms)

    def behind_counted(self, sub_id: str, gen: int, too_far: bool, head: int, now_ms: int) -> list[Effect]:
        sub = self._current(sub_id, gen)
        if sub is None:
            return []
        sub.busy = False
        if too_far:
            del self.subs[sub.id]
            self.stats["refreshes"] += 1
            return [Send(P.message(P.REFRESH, sub=sub.id, head=head, reason="too_far_behind",
                                   max_behind=self.config.max_behind))]
        return self._pump(sub, now_ms)

    def read_failed(self, sub_id: str, gen: int, error: SynclineError) -> list[Effect]:
        """A read failed for a reason other than an outage (the shell waits those out):
        the client reconnects and resumes rather than stay connected without events."""
        if self._current(sub_id, gen) is None:
            return []
        self.subs.pop(sub_id, None)
        self.closed = True
        return [self._error(sub_id, error), Close(CLOSE_INTERNAL, "subscription_failed")]

    def ops_done(self, ref: str, results: Sequence[dict[str, Any] | None], commit: CommitOps) -> list[Effect]:
        """``results``: the commit's outcome per op index (None where the session answered
        itself, e.g. a rejected op)."""
        merged = list(self._pending_results.pop(ref, [None] * commit.size))
        for i, r in enumerate(results):
            if r is not None:
                merged[i] = r
        return [Send(P.message(P.OPACKS, id=ref, results=merged))]

    def ops_failed(self, ref: str, error: SynclineError) -> list[Effect]:
        self._pending_results.pop(ref, None)
        return [self._error(ref, error)]

    def message_stored(self, effect: StoreMessage, position: int, duplicate: bool) -> list[Effect]:
        out: list[Effect] = [Send(P.message(P.SENT, id=effect.ref, pos=position, duplicate=duplicate))]
        if not duplicate:
            d = effect.data
            if effect.type == ROOM_MESSAGE:
                live = P.message(P.MSG, room=d["room"], data=d.get("data"), conn=d.get("conn"), pos=position,
                                 **{"from": d["from"]})
            else:
                live = P.message(P.MSG, direct=True, to=d["to"], data=d.get("data"), conn=d.get("conn"),
                                 pos=position, **{"from": d["from"]})
            out.append(Deliver(effect.stream, live))
        return out

    def message_failed(self, effect: StoreMessage, error: SynclineError) -> list[Effect]:
        return [self._error(effect.ref, error)]

    def room_joined(self, room: str, members: list, states: list) -> list[Effect]:
        return [Send(P.message(P.JOINED, room=room, members=members, states=states))]

    def snapshot_ready(self, ref: str, chunks: Sequence[Any], position: int) -> list[Effect]:
        return [Send(P.message(P.SNAPSHOT, id=ref, index=c.index, total=c.total, checksum=c.checksum, data=c.data,
                               position=position)) for c in chunks]

    # -- handlers ---------------------------------------------------------------------

    def _on_hello(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        out: list[Effect] = []
        client = msg.get("client")
        if client and client != self.client:
            if not CLIENT_RE.match(client):
                raise ValidationError("invalid client id")
            self.client = client
            out.append(Rebind(client))
        for sub_id, pos in (msg.get("resume") or {}).items():
            if isinstance(sub_id, str) and isinstance(pos, int) and not isinstance(pos, bool) and pos >= 0:
                if len(self.resume) < self.config.subs_max or sub_id[:64] in self.resume:
                    self.resume[sub_id[:64]] = pos
        return out

    def _on_ping(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        return [Send(P.message(P.PONG, id=msg.get("id"), time_us=wall_us))]

    def _on_sub(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(READ)
        sub_id = msg["id"][:64]
        if sub_id not in self.subs and len(self.subs) >= self.config.subs_max:
            raise ValidationError(f"at most {self.config.subs_max} subscriptions per connection")
        streams = list(msg.get("streams") or ())
        prefixes = list(msg.get("prefixes") or ())
        for s in streams:
            check_stream(s)
        for r in msg.get("rooms") or ():
            streams.append(f"room/{check_room(r)}")
        if msg.get("inbox"):
            streams.append(dm_stream(self.who.user))
        access.check_selection(self.who, streams, prefixes)  # named streams; the rest is filtered per page
        after = msg.get("after")
        if after is None:
            after = self.resume.get(sub_id, 0)
        f = EventFilter(stream_prefixes=tuple(prefixes), streams=tuple(streams), types=tuple(msg.get("types") or ()))
        sub = _Sub(sub_id, None if f.is_empty else f, access.reads_everything(self.who), after, after, after,
                   self._next_gen(), progress_ms=now_ms)
        self.subs[sub_id] = sub  # (replaces one with the same id: its reads are ignored from now on)
        sub.busy = True
        return [CountBehind(sub.id, sub.gen, after, self.config.max_behind, sub.filter)]

    def _on_unsub(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self.subs.pop(msg["id"], None)
        return []

    def _on_ack(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        sub = self.subs.get(msg["sub"])
        if sub is None:
            return []
        upto = msg["upto"]
        if upto > sub.acked:
            sub.acked = min(upto, sub.sent_next)
            sub.progress_ms = now_ms
        while sub.inflight and sub.inflight[0] <= upto:
            sub.inflight.popleft()
        return self._pump(sub, now_ms)

    def _on_ops(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(WRITE)
        ops = msg["ops"]
        if not ops:
            raise ValidationError("ops must be a non-empty list")
        if len(ops) > self.config.ops_max:
            raise ValidationError(f"at most {self.config.ops_max} ops per batch")
        results: list[dict | None] = [None] * len(ops)
        records: list[tuple[int, Any]] = []
        docs: list[DocWrite] = []
        seen_doc_ops: set[str] = set()
        for i, raw in enumerate(ops):
            if isinstance(raw, dict) and raw.get("tenant") not in (None, self.who.tenant):
                raise TenantViolation("ops are scoped to the token's tenant", tenant=self.who.tenant)
            if isinstance(raw, dict) and raw.get("kind") == DOC_OP:
                d = self._doc_op(raw, seen_doc_ops)
                if isinstance(d, DocWrite):
                    docs.append(DocWrite(i, d.op_id, d.stream, d.update, d.client))
                else:
                    results[i] = d
                continue
            try:
                op = op_from_wire(raw)
                if not op.stream.startswith("rec/"):
                    raise ValidationError("record ops apply to record streams (rec/<collection>/<id>)")
            except ValidationError as e:
                oid = raw.get("op") if isinstance(raw, dict) else None
                results[i] = rejected(oid if isinstance(oid, str) else "", "", RejectReason.INVALID_OP,
                                      str(e)[:200]).to_wire()
                continue
            if op.user and op.user != self.who.user:  # a connection writes as its own user only
                results[i] = rejected(op.op_id, op.stream, RejectReason.INVALID_OP,
                                      "op user is not the caller").to_wire()
                continue
            refusal = access.write_refusal(self.who, op.stream)  # token scopes
            if refusal is not None:
                results[i] = rejected(op.op_id, op.stream, RejectReason.OUT_OF_SCOPE, refusal.message).to_wire()
                continue
            records.append((i, op))
        if not records and not docs:
            return [Send(P.message(P.OPACKS, id=msg["id"], results=results))]
        self._pending_results[msg["id"]] = results
        return [CommitOps(msg["id"], tuple(records), tuple(docs), len(ops))]

    def _doc_op(self, wire: dict, seen: set[str]) -> DocWrite | dict:
        op_id, stream, update = wire.get("op"), wire.get("stream"), wire.get("update")
        oid = op_id if isinstance(op_id, str) else ""
        try:
            if not oid or len(oid) > 200 or not isinstance(stream, str) or not stream.startswith("doc/"):
                raise ValidationError("a doc op needs an op id and a doc/ stream")
            check_stream(stream)
            if not isinstance(update, (bytes, bytearray)) or not update:
                raise ValidationError("a doc op carries a Yjs update (bytes)")
        except ValidationError as e:
            return {"kind": "rejected", "op": oid, "reason": RejectReason.INVALID_OP.value, "detail": str(e)[:200]}
        refusal = access.write_refusal(self.who, stream)  # token scopes
        if refusal is not None:
            return {"kind": "rejected", "op": oid, "stream": stream, "reason": RejectReason.OUT_OF_SCOPE.value,
                    "detail": refusal.message}
        if oid in seen:
            return {"kind": "duplicate", "op": oid, "stream": stream, "original": {"kind": "applied", "op": oid}}
        try:
            check_update(bytes(update))  # a malformed update never enters the log
        except SynclineError as e:
            return {"kind": "rejected", "op": oid, "reason": RejectReason.INVALID_VALUE.value,
                    "detail": e.message[:200]}
        seen.add(oid)
        client = wire.get("client") if isinstance(wire.get("client"), str) else self.client
        return DocWrite(-1, oid, stream, bytes(update), client or self.client)

    def _on_snap(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(READ)
        streams, prefixes = tuple(msg.get("streams") or ()), tuple(msg.get("prefixes") or ())
        access.check_selection(self.who, streams, prefixes)  # the shell leaves out what may_read refuses
        return [TakeSnapshot(msg["id"], streams, prefixes)]

    def _on_join(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(READ)
        room = check_room(msg["room"])
        access.check_read(self.who, f"room/{room}")  # token scopes
        if room not in self.rooms and len(self.rooms) >= self.config.rooms_max:
            raise TooManyRooms(f"at most {self.config.rooms_max} rooms per connection", max=self.config.rooms_max)
        self.rooms.add(room)
        return [JoinRoom(room)]

    def _on_leave(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        room = check_room(msg["room"])
        self.rooms.discard(room)
        return [LeaveRoom(room), Send(P.message(P.LEFT, room=room))]

    def _on_say(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(WRITE)
        room = check_room(msg["room"])
        if room not in self.rooms:
            raise Forbidden("join the room before sending to it", room=room)
        access.check_write(self.who, f"room/{room}")  # token scopes (read-only in this room)
        return [self._message(msg, f"room/{room}", ROOM_MESSAGE, {"room": room})]

    def _on_dm(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        self._require(WRITE)
        to = msg["to"]
        stream = check_stream(dm_stream(to))
        access.check_write(self.who, stream)  # token scopes
        return [self._message(msg, stream, DM_MESSAGE, {"to": to})]

    def _message(self, msg: dict, stream: str, type_: str, extra: dict) -> StoreMessage:
        ref = msg.get("id")
        data = {**extra, "from": self.who.user, "data": msg.get("data"), "conn": self.session_id}
        # A resent message (same id from the same client) is stored once.
        key = f"msg:{self.who.user}:{self.client}:{ref}" if ref is not None else None
        return StoreMessage(ref, stream, type_, data, key)

    def _on_presence(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        room = check_room(msg["room"])
        if room not in self.rooms:
            raise Forbidden("join the room before setting presence in it", room=room)
        return [SetPresence(room, msg.get("state"))]

    def _on_auth(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        return [VerifyToken(msg.get("id"), msg["token"])]

    def _on_bus(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        return [BusRequest(msg)]

    def _on_command(self, msg: dict, now_ms: int, wall_us: int) -> list[Effect]:
        raise WebSocketForbidden("critical commands are REST only: POST /v1/commands/{type}")

    # -- access -------------------------------------------------------------------------

    def may_read(self, stream: str) -> bool:
        """Whether this connection may read ``stream`` (engine/access.py); the shells filter
        snapshots with it."""
        return access.can_read(self.who, stream)

    def admits(self, msg: dict[str, Any]) -> bool:
        """Whether a live message from the hub (a room or direct message, presence) may go
        to this connection. Without scopes, always (rooms were checked at ``join``, and
        one's own inbox is one's own); a scoped token needs read access to the stream."""
        if self.who.scopes is None:
            return True
        if msg.get("direct"):
            return access.can_read(self.who, dm_stream(self.who.user))
        room = msg.get("room")
        return not isinstance(room, str) or access.can_read(self.who, f"room/{room}")

    # -- helpers ------------------------------------------------------------------------

    def _pump(self, sub: _Sub, now_ms: int) -> list[Effect]:
        """Ask for the next page when the window has room and no read is outstanding."""
        if sub.busy or self.closed or self.subs.get(sub.id) is not sub:
            return []
        if len(sub.inflight) >= self.config.window_batches_max:
            return []
        sub.busy = True
        return [ReadLog(sub.id, sub.gen, sub.cursor, self.config.batch_events_max, sub.filter)]

    def _current(self, sub_id: str, gen: int) -> _Sub | None:
        sub = self.subs.get(sub_id)
        return sub if sub is not None and sub.gen == gen and not self.closed else None

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _require(self, perm: str) -> None:
        if not self.who.can(perm):
            raise Forbidden(f"the token lacks the {perm!r} permission", needed=perm)

    def _error(self, ref: Any, err: SynclineError) -> Send:
        body: dict[str, Any] = {"t": P.ERROR, "code": err.code, "message": err.public_message}
        if ref is not None:
            body["ref"] = ref
        if err.details and err.http_status < 500:  # (a server failure's details stay in the logs)
            body["details"] = {k: v for k, v in err.details.items()
                               if isinstance(v, (str, int, float, bool, type(None)))}
        return Send(body)

    def _rate_limited(self, verdict: Verdict, now_ms: int) -> list[Effect]:
        retry = round(self.limiter.retry_after(now_ms / 1000), 3)
        if verdict is Verdict.WARN:
            return [Send(P.message(P.WARN, code="rate_limited", message="slow down: message dropped",
                                   retry_after_s=retry))]
        self.closed = True
        ban_ms = self.config.rate_limit_ban_ms
        return [Ban(now_ms + ban_ms),
                Send(P.message(P.BYE, code="rate_limited", reason="too many messages", retry_after_s=ban_ms / 1000)),
                Close(P.CLOSE_RATE_LIMITED, "rate_limited")]


_HANDLERS: dict[str, Callable[[ServerSession, dict, int, int], list[Effect]]] = {
    P.HELLO: ServerSession._on_hello,
    P.PING: ServerSession._on_ping,
    P.SUB: ServerSession._on_sub,
    P.UNSUB: ServerSession._on_unsub,
    P.ACK: ServerSession._on_ack,
    P.OPS: ServerSession._on_ops,
    P.SNAP: ServerSession._on_snap,
    P.JOIN: ServerSession._on_join,
    P.LEAVE: ServerSession._on_leave,
    P.SAY: ServerSession._on_say,
    P.DM: ServerSession._on_dm,
    P.PRESENCE: ServerSession._on_presence,
    P.COMMAND: ServerSession._on_command,
    P.AUTH: ServerSession._on_auth,
    **{t: ServerSession._on_bus for t in P.BUS_TYPES},
}
