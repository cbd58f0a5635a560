"""The session core: a sans-I/O state machine for one client (docs/clientkit.md).

No socket, no asyncio, no clock, no global randomness: time arrives as ``now_ms``
arguments and randomness through an injected ``random.Random``. Every method returns
a list of outputs (frames to send, events applied, state changes, conflicts...) for
the caller to carry out; the core performs nothing itself. The asyncio client
(``client.py``) and the simulator are two such callers.

States and the transition table
-------------------------------
Rules:
- Only the inputs listed in ``TRANSITIONS`` change the state; any other (state,
  input) pair leaves the state alone (a late ``welcome`` on a dead connection, a
  ``disconnected`` while offline, ... are harmless).
- OFFLINE is where a core starts and where every disconnect leads. With
  ``auto_reconnect`` a ``tick`` past the backoff deadline emits ``Connect`` and moves
  to CONNECTING; ``connect()`` does the same at once.
- CONNECTING -> ONLINE on ``welcome``: the core subscribes from its last applied
  position, re-joins its rooms and starts sending queued ops, in order, in batches.
- CONNECTING has a deadline (``handshake_timeout_ms`` after ``connect`` and again
  after ``connected``): a ``tick`` past it emits ``Disconnect("handshake_timeout")``
  and goes back to OFFLINE and the backoff, so an attempt cut off before ``welcome``
  (a partition while connecting, a lost ``hello``) never strands the core.
- ONLINE -> RESYNCING on ``refresh`` (too far behind): the core asks for a snapshot;
  a corrupted one (checksum mismatch) is refused and asked for again.
- RESYNCING -> ONLINE once the snapshot is installed (the core subscribes again
  after the snapshot's position).
- An ``error`` whose ``ref`` is our subscription id means the server ended the
  subscription (state unchanged): a ``tick`` after a backoff sends ``sub`` again from
  the last applied position, unless the connection closes first (``welcome`` then
  subscribes on the next one).
- Ops are only sent while ONLINE. An op leaves the queue when its result arrives;
  on a disconnect every unanswered op is sent again on the next connection (the
  server answers ``duplicate`` for those it had committed).
"""
from __future__ import annotations

import random
from collections.abc import Mapping as AbcMapping
from enum import StrEnum
from typing import Any, Iterable, Mapping, NamedTuple

from syncline.engine import protocol as P
from syncline.engine.clocks import HLCTimestamp, VectorClock, hlc_receive, hlc_send
from syncline.engine.records import ClientOp, Conflict, ResolutionConfig
from syncline.engine.syncdata import Chunk, SnapshotChecksumMismatch, assemble_snapshot

from .errors import LocalProtocolError, UnknownConflict
from .queue import MemoryOpQueue, OpQueue
from .replica import RecordsReplica


class State(StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    RESYNCING = "resyncing"


class Input(StrEnum):
    CONNECT = "connect"  # the caller asked, or the backoff deadline passed
    WELCOME = "welcome"  # the server accepted the session
    REFRESH = "refresh"  # the server says we are too far behind
    SNAPSHOT_INSTALLED = "snapshot_installed"
    DISCONNECTED = "disconnected"


S, I = State, Input  # noqa: E741 - the transition table reads as a table
TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.OFFLINE, I.CONNECT): S.CONNECTING,
    (S.CONNECTING, I.WELCOME): S.ONLINE,
    (S.CONNECTING, I.DISCONNECTED): S.OFFLINE,
    (S.ONLINE, I.REFRESH): S.RESYNCING,
    (S.ONLINE, I.DISCONNECTED): S.OFFLINE,
    (S.RESYNCING, I.SNAPSHOT_INSTALLED): S.ONLINE,
    (S.RESYNCING, I.DISCONNECTED): S.OFFLINE,
}


# ---------------------------------------------------------------- outputs
class Send(NamedTuple):
    msg: dict


class Connect(NamedTuple):
    attempt: int


class Disconnect(NamedTuple):
    reason: str


class StateChanged(NamedTuple):
    old: State
    new: State


class EventsApplied(NamedTuple):
    events: list  # wire events (every type: documents, feeds... as well as records)
    position: int


class Progress(NamedTuple):
    position: int
    head: int


class OpResult(NamedTuple):
    op_id: str
    kind: str  # applied | merged | conflict | duplicate | rejected
    result: dict


class ConflictFound(NamedTuple):
    conflict: Conflict


class SnapshotCorrupt(NamedTuple):
    attempt: int
    error: str


class SnapshotInstalled(NamedTuple):
    position: int
    dropped_ops: int


class PresenceChanged(NamedTuple):
    room: str
    user: str
    state: dict | None


class RoomMessage(NamedTuple):
    msg: dict


class ServerError(NamedTuple):
    msg: dict


Output = (Send | Connect | Disconnect | StateChanged | EventsApplied | Progress | OpResult | ConflictFound
          | SnapshotCorrupt | SnapshotInstalled | PresenceChanged | RoomMessage | ServerError)

_SHARED_RNG = random.Random()
# Encoded remote HLC -> decoded: every replica of a process reads the same events' clocks
# (immutable tuples: shared safely). Bounded: cleared when full.
_HLCS: dict[str, HLCTimestamp] = {}
ACCEPTED = frozenset({"applied", "merged", "conflict", "duplicate"})


class SessionCore:
    """One client's session. Cheap: ``__slots__``, and the optional parts (rooms,
    presence, snapshot chunks, per-record clocks) are created on first use."""

    __slots__ = (
        "client_id", "user", "queue", "replica", "rng", "state", "position", "head", "prefixes", "sub_id",
        "batch_size", "max_inflight", "heartbeat_ms", "stale_ms", "ack_timeout_ms", "backoff_base_ms",
        "backoff_max_ms", "auto_reconnect", "keep_local_ops_on_refresh", "snapshot_attempts_max",
        "_now", "_hlc", "_op_n", "_clocks", "_inflight", "_sent_seq", "_batch_n", "_attempt", "_next_attempt",
        "_last_rx", "_last_ping", "_rooms", "_presence", "_others", "_snap", "_snap_attempt", "_snap_id",
        "_ping_n", "persist_replica", "persist_interval_ms", "_saved_at", "_saved_position",
        "handshake_timeout_ms", "_handshake_due", "_resub_due", "_resub_n",
        "clock_offset_ms", "max_remote_lead_ms", "_restamped",
    )

    def __init__(
        self,
        *,
        user: str,
        queue: OpQueue | None = None,
        client_id: str | None = None,
        rng: random.Random | None = None,
        config: ResolutionConfig | None = None,
        prefixes: Iterable[str] = ("rec/",),
        position: int = 0,
        batch_size: int = 1_000,
        max_inflight: int = 2,
        heartbeat_ms: int = 30_000,
        stale_ms: int = 90_000,
        ack_timeout_ms: int = 30_000,
        backoff_base_ms: int = 250,
        backoff_max_ms: int = 30_000,
        auto_reconnect: bool = True,
        keep_local_ops_on_refresh: bool = True,
        snapshot_attempts_max: int = 3,
        persist_replica: bool = True,
        persist_interval_ms: int = 1_000,
        handshake_timeout_ms: int | None = 10_000,
        max_remote_lead_ms: int | None = 300_000,
    ) -> None:
        self.queue = queue if queue is not None else MemoryOpQueue()
        # A Random holds 2.5 KB of state: cores share one unless the caller injects theirs.
        self.rng = rng if rng is not None else _SHARED_RNG
        stored = self.queue.get_meta("client")
        if client_id is None:
            client_id = stored or "c%016x" % self.rng.getrandbits(64)
        if stored is None:
            self.queue.set_meta({"client": client_id})
        elif stored != client_id:
            raise LocalProtocolError(f"the queue belongs to client {stored!r}, not {client_id!r}")
        self.client_id = client_id
        self.user = user
        self.replica = RecordsReplica(config)
        self.state = State.OFFLINE
        self.position = position
        self.head = position
        self.prefixes = list(prefixes)
        self.sub_id = "main"
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.heartbeat_ms = heartbeat_ms
        self.stale_ms = stale_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        self.auto_reconnect = auto_reconnect
        self.keep_local_ops_on_refresh = keep_local_ops_on_refresh
        self.snapshot_attempts_max = snapshot_attempts_max
        self._now = 0
        last = self.queue.get_meta("hlc")
        self._hlc: HLCTimestamp | None = HLCTimestamp.decode(last) if last else None
        self._op_n: int = self.queue.get_meta("n", 0)
        self._clocks: dict[str, VectorClock] | None = None
        self._inflight: dict[str, tuple[list[str], int]] = {}  # batch id -> (op ids, sent at)
        self._sent_seq = 0
        self._batch_n = 0
        self._attempt = 0
        self._next_attempt = 0
        self._last_rx = 0
        self._last_ping = 0
        self._rooms: set[str] | None = None
        self._presence: dict[str, dict] | None = None  # our own state per room
        self._others: dict[str, dict[str, Any]] | None = None  # room -> user -> state
        self._snap: dict[int, Chunk] | None = None
        self._snap_attempt = 0
        self._snap_id = ""
        self._ping_n = 0
        self.persist_replica = persist_replica
        self.persist_interval_ms = persist_interval_ms
        self._saved_at = 0
        # None: no deadline in CONNECTING (only for a caller whose transport has its own).
        self.handshake_timeout_ms = handshake_timeout_ms
        self._handshake_due: int | None = None
        # The server ended our subscription with an ``error`` but kept the connection: when
        # to send ``sub`` again from our position (None: the subscription is live), and how
        # many times in a row it failed (for the backoff).
        self._resub_due: int | None = None
        self._resub_n = 0
        # Clock skew (docs/clientkit.md): the server's clock minus ours, learned from a
        # ``clock_skew`` rejection (its ``server_ms``), added to ``now_ms`` for new stamps;
        # a remote HLC further ahead of our clock than ``max_remote_lead_ms`` is not
        # followed (a poisoned event clock cannot push our stamps out of the server's
        # bound); the ops stamped again once (a second clock_skew is surfaced as rejected).
        self.clock_offset_ms = 0
        self.max_remote_lead_ms = max_remote_lead_ms
        self._restamped: set[str] | None = None
        if len(self.queue):
            # Ops queued by an earlier run (the process was killed or closed): readable again.
            after = 0
            while batch := self.queue.peek(after, 1000):
                for q in batch:
                    self.replica.local(q.to_op())
                after = batch[-1].seq
        if persist_replica:
            # The confirmed state an earlier run saved, with the position it is at: resume
            # from there instead of catching up from 0. Queued ops it already contains
            # leave the overlay (``RecordsReplica.restore``).
            saved_position, saved = self.queue.load_replica()
            if saved_position > self.position:
                self.replica.restore(saved)
                self.position = self.head = saved_position
            self.replica.track_changes()
        self._saved_position = self.position

    # ------------------------------------------------------------ transitions
    def _to(self, inp: Input, out: list) -> bool:
        new = TRANSITIONS.get((self.state, inp))
        if new is None:
            return False
        if new is not self.state:
            out.append(StateChanged(self.state, new))
            self.state = new
        return True

    # ------------------------------------------------------------ connection
    def connect(self, now_ms: int) -> list[Output]:
        """Ask for a connection now (ignores the backoff deadline)."""
        self._now = max(self._now, now_ms)
        out: list[Output] = []
        if self._to(Input.CONNECT, out):
            self._attempt += 1
            self._arm_handshake(now_ms)
            out.append(Connect(self._attempt))
        return out

    def _arm_handshake(self, now_ms: int) -> None:
        t = self.handshake_timeout_ms
        self._handshake_due = now_ms + t if t is not None else None

    def connected(self, now_ms: int) -> list[Output]:
        """The transport is open: introduce ourselves. ``welcome`` completes the handshake."""
        self._now = max(self._now, now_ms)
        self._last_rx = self._last_ping = now_ms
        if self.state is not State.CONNECTING:
            return []
        self._arm_handshake(now_ms)  # the handshake gets its own full deadline
        return [Send(P.message(P.HELLO, client=self.client_id, resume={self.sub_id: self.position}))]

    def disconnected(self, now_ms: int, reason: str = "") -> list[Output]:
        self._now = max(self._now, now_ms)
        out: list[Output] = []
        self.save(now_ms)
        if self._to(Input.DISCONNECTED, out):
            self._handshake_due = None
            self._resub_due = None  # ``welcome`` subscribes again on the next connection
            self._inflight.clear()
            self._sent_seq = 0  # every unanswered op goes again, in order
            self._snap = None
            delay = min(self.backoff_max_ms, self.backoff_base_ms * (2 ** min(self._attempt, 20)))
            # "Full jitter": a uniform delay in [delay/2, delay], so clients that lost one
            # server together do not come back together.
            self._next_attempt = now_ms + delay // 2 + self.rng.randint(0, max(0, delay // 2))
        return out

    def tick(self, now_ms: int) -> list[Output]:
        self._now = max(self._now, now_ms)
        st = self.state
        if st is State.OFFLINE:
            if self.auto_reconnect and now_ms >= self._next_attempt:
                return self.connect(now_ms)
            return []
        if st is State.CONNECTING:
            due = self._handshake_due
            if due is None or now_ms < due:
                return []
            # No ``welcome`` in time: give the attempt up and back off like any disconnect.
            out: list[Output] = [Disconnect("handshake_timeout")]
            out.extend(self.disconnected(now_ms, "handshake_timeout"))
            return out
        if self.position != self._saved_position and now_ms - self._saved_at >= self.persist_interval_ms:
            self.save(now_ms)
        out = []
        if now_ms - self._last_rx > self.stale_ms:
            out.append(Disconnect("stale"))
            out.extend(self.disconnected(now_ms, "stale"))
            return out
        if now_ms - self._last_ping >= self.heartbeat_ms:
            self._last_ping = now_ms
            self._ping_n += 1
            out.append(Send(P.message(P.PING, id=self._ping_n)))
        if self._resub_due is not None and now_ms >= self._resub_due and st is State.ONLINE:
            out.extend(self._subscribe())
        if self._inflight:
            oldest = min(sent for _, sent in self._inflight.values())
            if now_ms - oldest > self.ack_timeout_ms:
                # An ops batch was never answered (dropped by a rate limiter, lost):
                # send everything unanswered again; duplicates are answered as such.
                self._inflight.clear()
                self._sent_seq = 0
        out.extend(self._pump())
        return out

    def save(self, now_ms: int, *, everything: bool = False) -> None:
        """Persist the replica's changed records with the position, in one queue transaction.

        Any saved (position, records) pair is consistent, so saving is throttled to once per
        ``persist_interval_ms`` while events flow: a crash loses at most that much progress,
        which the next run catches up by delta. The asyncio client saves on close too."""
        if not self.persist_replica or (self.position == self._saved_position and not everything):
            return
        self.queue.save_replica(self.position, self.replica.export(everything=everything), reset=everything)
        self._saved_position = self.position
        self._saved_at = now_ms

    def next_deadline(self) -> int | None:
        """The next ``now_ms`` at which ``tick`` has something to do (None: nothing planned)."""
        st = self.state
        if st is State.OFFLINE:
            return self._next_attempt if self.auto_reconnect else None
        if st is State.CONNECTING:
            return self._handshake_due
        # (Comparisons, not ``min`` calls: the simulator asks after every interaction.)
        d = self._last_ping + self.heartbeat_ms
        stale = self._last_rx + self.stale_ms + 1
        if stale < d:
            d = stale
        if self._resub_due is not None and st is State.ONLINE and self._resub_due < d:
            d = self._resub_due
        if self._inflight:
            for _, sent in self._inflight.values():
                if sent + self.ack_timeout_ms + 1 < d:
                    d = sent + self.ack_timeout_ms + 1
        if self.persist_replica and self.position != self._saved_position:
            save = self._saved_at + self.persist_interval_ms  # the periodic position save
            if save < d:
                d = save
        return d

    # ------------------------------------------------------------ user ops
    def set(self, stream: str, values: Mapping[str, Any], now_ms: int, *, delete: Iterable[str] = ()
            ) -> list[Output]:
        """Write fields of a record (and delete others): queued, applied locally at once."""
        self._now = max(self._now, now_ms)
        op = ClientOp(self._next_op_id(), self.client_id, self.user, stream, self._next_clock(stream),
                      self._next_hlc(now_ms), dict(values), tuple(delete), self.replica.version(stream))
        return self._enqueue(op)

    def delete(self, stream: str, fields: Iterable[str], now_ms: int) -> list[Output]:
        return self.set(stream, {}, now_ms, delete=fields)

    def resolve(self, conflict_id: str, choice: str, now_ms: int, *, value: Any = None,
                custom: bool = False) -> list[Output]:
        """Decide a manual conflict: ``choice`` is a version's op id, or use ``custom=True``
        with ``value``. The decision is an op like any other (queued, idempotent)."""
        self._now = max(self._now, now_ms)
        c = self.replica.conflict(conflict_id)
        if c is None:
            raise UnknownConflict(f"no open conflict {conflict_id!r} in the local replica")
        kw = {"value": value} if custom else {}
        op = c.resolution(op_id=self._next_op_id(), client=self.client_id, user=self.user,
                          hlc=self._next_hlc(now_ms), choice="custom" if custom else choice,
                          base_clock=self._local_clock(c.stream), **kw)
        return self._enqueue(op)

    def _enqueue(self, op) -> list[Output]:
        meta = {"n": self._op_n + 1, "hlc": op.hlc.encode(), "vc:" + op.stream: op.clock.to_dict()}
        self.queue.append(op, meta)  # QueueFull propagates; nothing below has happened then
        self._op_n += 1
        self._hlc = op.hlc
        if self._clocks is None:
            self._clocks = {}
        self._clocks[op.stream] = op.clock
        self.replica.local(op)
        return self._pump()

    def _next_op_id(self) -> str:
        return f"{self.client_id}.{self._op_n + 1}"

    def _next_hlc(self, now_ms: int) -> HLCTimestamp:
        return hlc_send(self._hlc, now_ms + self.clock_offset_ms, self.client_id)

    def _restamp(self, op_id: str, server_ms: Any) -> bool:
        """The server refused ``op_id`` with ``clock_skew``: adopt its clock and stamp the op
        again (once per op). False when it may not be stamped again (then it is rejected)."""
        if type(server_ms) is not int or (self._restamped is not None and op_id in self._restamped):
            return False
        self.clock_offset_ms = server_ms - self._now
        if self._hlc is not None and self._hlc.wall_ms > server_ms:
            # Our HLC ran ahead with the bad clock: start again from the server's time.
            # (Our own later writes still win over our earlier ones: the vector clocks say so.)
            self._hlc = None
        hlc = self._next_hlc(self._now)
        q = self.queue.restamp(op_id, hlc.encode(), {"hlc": hlc.encode()})
        if q is None:
            return False
        self._hlc = hlc
        if self._restamped is None:
            self._restamped = set()
        self._restamped.add(op_id)
        self.replica.forget(op_id)
        self.replica.local(q.to_op())
        return True

    def _local_clock(self, stream: str) -> VectorClock:
        own = self._clocks.get(stream) if self._clocks is not None else None
        if own is None:
            stored = self.queue.get_meta("vc:" + stream)
            own = VectorClock.from_dict(stored) if stored else VectorClock()
        return self.replica.clock(stream).merge(own)

    def _next_clock(self, stream: str) -> VectorClock:
        return self._local_clock(stream).increment(self.client_id)

    # ------------------------------------------------------------ presence and rooms
    def join(self, room: str) -> list[Output]:
        if self._rooms is None:
            self._rooms = set()
        self._rooms.add(room)
        return [Send(P.message(P.JOIN, room=room))] if self._live() else []

    def leave(self, room: str) -> list[Output]:
        if self._rooms is not None:
            self._rooms.discard(room)
        if self._presence is not None:
            self._presence.pop(room, None)
        if self._others is not None:
            self._others.pop(room, None)
        return [Send(P.message(P.LEAVE, room=room))] if self._live() else []

    def set_presence(self, room: str, state: dict | None) -> list[Output]:
        """Typing, cursor...: ephemeral; re-sent after a reconnect, dropped while offline."""
        if self._presence is None:
            self._presence = {}
        self._presence[room] = state
        return [Send(P.message(P.PRESENCE, room=room, state=state))] if self._live() else []

    def say(self, room: str, data: Any, *, msg_id: str | None = None) -> list[Output]:
        """A room message: stored by the server (answered by ``sent {id, pos}``), delivered
        to the room's members live and to those away when they resume the room's stream.
        With ``msg_id``, sending it again after a reconnect stores it once."""
        if not self._live():
            return []
        extra = {"id": msg_id} if msg_id is not None else {}
        return [Send(P.message(P.SAY, room=room, data=data, **extra))]

    def dm(self, to: str, data: Any, *, msg_id: str | None = None) -> list[Output]:
        """A direct message, stored in the recipient's inbox (``dm/<to>``): delivered live
        to every connection of theirs, and on resume (``sub {inbox: true}``) if offline."""
        if not self._live():
            return []
        extra = {"id": msg_id} if msg_id is not None else {}
        return [Send(P.message(P.DM, to=to, data=data, **extra))]

    def others(self, room: str) -> dict[str, Any]:
        """Other users' presence state in a room, as last heard."""
        return dict(self._others.get(room, {})) if self._others else {}

    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms or ())

    def _live(self) -> bool:
        return self.state is State.ONLINE or self.state is State.RESYNCING

    # ------------------------------------------------------------ incoming
    def receive(self, msg: Mapping[str, Any], now_ms: int) -> list[Output]:
        """One validated server message (``engine.protocol.decode_frame`` output)."""
        self._now = max(self._now, now_ms)
        self._last_rx = now_ms
        t = msg.get("t")
        h = _HANDLERS.get(t)
        if h is None:
            return []  # unknown or client-only types: ignored (forward compatible)
        return h(self, msg)

    def _on_welcome(self, msg) -> list[Output]:
        out: list[Output] = []
        if not self._to(Input.WELCOME, out):
            return out
        self._handshake_due = None
        self._attempt = 0
        self.head = max(self.head, int(msg.get("head") or 0))
        hb = msg.get("heartbeat_s")
        if isinstance(hb, (int, float)) and hb > 0:
            self.heartbeat_ms = int(hb * 1000)
        out.extend(self._subscribe())
        for room in sorted(self._rooms or ()):
            out.append(Send(P.message(P.JOIN, room=room)))
            st = (self._presence or {}).get(room)
            if st is not None:
                out.append(Send(P.message(P.PRESENCE, room=room, state=st)))
        out.extend(self._pump())
        return out

    def _on_events(self, msg) -> list[Output]:
        if msg.get("sub") != self.sub_id or self.state is State.OFFLINE:
            return []
        # Exactly once: events at or before our position (a batch the server sends again
        # after a resume) are skipped. One pass over the batch (catch-up runs through here
        # once per event: plain-dict fast paths, no typing checks) keeps the rest, finds
        # the last position and the latest remote HLC: encoded HLCs sort as the timestamps
        # do, so one decode per batch moves ours past all of them.
        pos = self.position
        raw = msg["events"]
        facts = _shared_batch_facts(raw) if self.replica.shared is not None else None
        if facts is not None and facts[0] > pos:
            # A list handed to many cores of this process, read once: all of it is new.
            events, last, latest = raw, facts[1], facts[2]
        else:
            events, last, latest = _new_events(raw, pos)
        out: list[Output] = []
        self._resub_n = 0  # the subscription delivers again
        if events:
            for c in self.replica.apply_wire_events(events):
                out.append(ConflictFound(c))
            if latest is not None:
                remote = _HLCS.get(latest)
                if remote is None:
                    try:
                        remote = HLCTimestamp.decode(latest)
                    except Exception:
                        pass  # a remote clock we cannot read never blocks applying the event
                    else:
                        if len(_HLCS) >= 4_096:
                            _HLCS.clear()
                        _HLCS[latest] = remote
                if remote is not None:
                    try:
                        self._hlc = hlc_receive(self._hlc, remote, self._now + self.clock_offset_ms, self.client_id,
                                                self.max_remote_lead_ms)
                    except Exception:
                        pass  # (ClockDriftError: a clock too far ahead is not followed)
        self.position = max(pos, int(msg["next"]), last)
        head = msg.get("head")
        self.head = max(self.head, self.position, int(head) if isinstance(head, int) else 0)
        if events:
            out.append(EventsApplied(events, self.position))
        if self.persist_replica and self._now - self._saved_at >= self.persist_interval_ms:
            self.save(self._now)
        out.append(Progress(self.position, self.head))
        out.append(Send(P.message(P.ACK, sub=self.sub_id, upto=self.position)))
        return out

    def _on_opacks(self, msg) -> list[Output]:
        entry = self._inflight.pop(msg["id"], None)
        out: list[Output] = []
        done: list[str] = []
        for r in msg["results"]:
            # (plain ``dict`` first: ``isinstance`` against a typing alias is slow, per op)
            if type(r) is not dict and not isinstance(r, AbcMapping):
                continue
            op_id = r.get("op")
            if type(op_id) is not str:
                continue
            kind = r.get("kind", "")
            if type(kind) is not str:
                kind = str(kind)
            if kind == "rejected" and r.get("reason") == "clock_skew" and self._restamp(op_id, r.get("server_ms")):
                continue  # stamped again from the server's clock: it goes again (unanswered)
            done.append(op_id)
            if kind not in ACCEPTED:
                self.replica.forget(op_id)  # rejected: the optimistic value goes away
            out.append(OpResult(op_id, kind, dict(r)))
        self.queue.ack(done)
        if self._restamped:
            self._restamped.difference_update(done)
        if entry is not None and len(done) < len(entry[0]):
            # A partial answer: whatever was not answered goes again from the queue.
            self._inflight.clear()
            self._sent_seq = 0
        if not self._inflight and len(self.queue) == 0:
            self._sent_seq = 0
        out.extend(self._pump())
        return out

    def _on_refresh(self, msg) -> list[Output]:
        if msg.get("sub") != self.sub_id:
            return []
        out: list[Output] = []
        if self.state is State.RESYNCING:
            return out
        if not self._to(Input.REFRESH, out):
            return out
        self.head = max(self.head, int(msg["head"]))
        self._snap_attempt = 0
        out.extend(self._ask_snapshot())
        return out

    def _ask_snapshot(self) -> list[Output]:
        self._snap_attempt += 1
        self._snap = {}
        self._snap_id = f"snap{self._snap_attempt}"
        return [Send(P.message(P.SNAP, id=self._snap_id, prefixes=self.prefixes))]

    def _on_snapshot(self, msg) -> list[Output]:
        if self.state is not State.RESYNCING or self._snap is None or msg["id"] != self._snap_id:
            return []
        self._snap[msg["index"]] = Chunk(msg["index"], msg["total"], msg["checksum"], bytes(msg["data"]))
        if len(self._snap) < msg["total"]:
            return []
        chunks = list(self._snap.values())
        self._snap = None
        out: list[Output] = []
        try:
            position, content, _ = assemble_snapshot(chunks)
        except SnapshotChecksumMismatch as e:
            # Refuse it: nothing of it is installed. Ask again, a bounded number of times.
            out.append(SnapshotCorrupt(self._snap_attempt, e.message))
            if self._snap_attempt >= self.snapshot_attempts_max:
                out.append(Disconnect("snapshot_refused"))
                out.extend(self.disconnected(self._now, "snapshot_refused"))
                return out
            out.extend(self._ask_snapshot())
            return out
        return out + self.install_snapshot(position, content)

    def install_snapshot(self, position: int, content: Mapping[str, Any]) -> list[Output]:
        """Install a verified snapshot (from ``snap`` or fetched over REST by the shell)."""
        keep = self.keep_local_ops_on_refresh
        dropped = 0
        if not keep:
            dropped = self.queue.clear()
        self.replica.install_snapshot(content, keep_pending=keep)
        self.position = position
        self.head = max(self.head, position)
        self.save(self._now, everything=True)  # the snapshot replaces the saved state, in one step
        self._inflight.clear()
        self._sent_seq = 0
        out: list[Output] = [SnapshotInstalled(position, dropped)]
        if self._to(Input.SNAPSHOT_INSTALLED, out):
            out.extend(self._subscribe())
            out.extend(self._pump())
        return out

    def _on_presence(self, msg) -> list[Output]:
        room, user = msg.get("room"), msg.get("user")
        if not isinstance(room, str) or not isinstance(user, str):
            return []
        state = msg.get("state")
        if self._others is None:
            self._others = {}
        members = self._others.setdefault(room, {})
        if msg.get("event") == "left" or (state is None and msg.get("event") != "joined"):
            members.pop(user, None)
        else:
            members[user] = state
        return [PresenceChanged(room, user, state)]

    def _on_joined(self, msg) -> list[Output]:
        # ``joined {room, members: [{user, client, online}], states: [{user, conn, state, ttl_s}]}``
        # (docs/protocol.md): the members, then the presence states current when we joined.
        members, states = msg.get("members"), msg.get("states")
        if isinstance(members, list) or isinstance(states, list):
            if self._others is None:
                self._others = {}
            room = self._others.setdefault(msg["room"], {})
            for m in members if isinstance(members, list) else ():
                is_map = type(m) is dict or isinstance(m, AbcMapping)
                u = m.get("user") if is_map else m
                if isinstance(u, str) and u != self.user:
                    room.setdefault(u, m.get("state") if is_map else None)
            for s in states if isinstance(states, list) else ():
                u = s.get("user") if type(s) is dict or isinstance(s, AbcMapping) else None
                if isinstance(u, str) and u != self.user and s.get("state") is not None:
                    room[u] = s["state"]
        return [RoomMessage(dict(msg))]

    def _on_conflict(self, msg) -> list[Output]:
        return [RoomMessage(dict(msg))]  # the replica finds conflicts in the events themselves

    def _on_msg(self, msg) -> list[Output]:
        return [RoomMessage(dict(msg))]

    def _on_error(self, msg) -> list[Output]:
        ref = msg.get("ref") or msg.get("id")
        if isinstance(ref, str) and ref in self._inflight:
            # The batch failed as a whole: send it (and what followed) again later.
            self._inflight.clear()
            self._sent_seq = 0
        elif ref == self.sub_id and self.state is not State.OFFLINE:
            # The server ended the subscription (its reads failed; docs/protocol.md, Errors).
            # It usually closes the connection too (1011) and ``welcome`` subscribes again;
            # if the connection stays open, ``tick`` subscribes again from our position after
            # a backoff (a subscription that keeps failing is not retried in a hot loop).
            delay = min(self.backoff_max_ms, self.backoff_base_ms * (2 ** min(self._resub_n, 20)))
            self._resub_n += 1
            self._resub_due = self._now + delay
        return [ServerError(dict(msg))]

    def _on_bye(self, msg) -> list[Output]:
        return [Disconnect(str(msg.get("code", "bye")))]

    def _on_pong(self, msg) -> list[Output]:
        return []

    def _subscribe(self) -> list[Output]:
        self._resub_due = None
        return [Send(P.message(P.SUB, id=self.sub_id, prefixes=self.prefixes, after=self.position))]

    # ------------------------------------------------------------ sending ops
    def _pump(self) -> list[Output]:
        if self.state is not State.ONLINE:
            return []
        out: list[Output] = []
        while len(self._inflight) < self.max_inflight:
            batch = self.queue.peek(self._sent_seq, self.batch_size)
            if not batch:
                break
            self._batch_n += 1
            bid = f"b{self._batch_n}"
            self._inflight[bid] = ([q.op_id for q in batch], self._now)
            self._sent_seq = batch[-1].seq
            out.append(Send(P.message(P.OPS, id=bid, ops=[q.to_wire() for q in batch])))
        return out

    # ------------------------------------------------------------ status
    @property
    def pending_ops(self) -> int:
        return len(self.queue)

    @property
    def status(self) -> str:
        """For an app's status line: "online", "offline", "reconnecting…" or "resyncing…"."""
        if self.state is State.ONLINE:
            return "online"
        if self.state is State.RESYNCING:
            return "resyncing…"
        if self.state is State.CONNECTING or (self.auto_reconnect and self._attempt > 0):
            return "reconnecting…"
        return "offline"

    def get(self, stream: str) -> dict[str, Any]:
        return self.replica.get(stream)


def _new_events(raw: list, pos: int) -> tuple[list, int, str | None]:
    """The events of a batch past ``pos`` (``raw`` itself when that is all of them), the
    last position and the latest encoded HLC among them: one pass."""
    kept: list | None = None  # None: every event so far is kept
    last = pos
    latest = None
    for i, e in enumerate(raw):
        if type(e) is dict or isinstance(e, AbcMapping):
            p = e.get("position", 0)
            if type(p) is not int:
                p = int(p)
            if p > pos:
                if p > last:
                    last = p
                clock = e.get("clock")
                if clock and type(clock) is dict:
                    ts = clock.get("hlc")
                    if type(ts) is str and (latest is None or ts > latest):
                        latest = ts
                if kept is not None:
                    kept.append(e)
                continue
        if kept is None:
            kept = raw[:i]
    return (raw if kept is None else kept), last, latest


def _batch_facts(raw: list) -> tuple[int, int, str | None] | None:
    """(first position, last position, latest encoded HLC) of a batch of plain event
    dicts in strictly increasing position order; None for any other batch."""
    first = last = latest = None
    for e in raw:
        if type(e) is not dict:
            return None
        p = e.get("position", 0)
        if type(p) is not int or (last is not None and p <= last):
            return None
        if first is None:
            first = p
        last = p
        clock = e.get("clock")
        if clock and type(clock) is dict:
            ts = clock.get("hlc")
            if type(ts) is str and (latest is None or ts > latest):
                latest = ts
    return None if first is None else (first, last, latest)


# id(events list) -> (the list, its length, its facts): only for cores whose replica shares
# folds (the simulator), where the server hands one list to the connections at one cursor
# and every core would otherwise read it again. Read-only lists, as the server's are.
_FACTS: dict[int, tuple[list, int, tuple[int, int, str | None] | None]] = {}


def _shared_batch_facts(raw: Any) -> tuple[int, int, str | None] | None:
    if type(raw) is not list:
        return None
    hit = _FACTS.get(id(raw))
    if hit is not None and hit[0] is raw and hit[1] == len(raw):
        return hit[2]
    facts = _batch_facts(raw)
    if len(_FACTS) >= 1_024:
        _FACTS.clear()
    _FACTS[id(raw)] = (raw, len(raw), facts)  # holds ``raw``: its id cannot be reused meanwhile
    return facts


_HANDLERS = {
    P.WELCOME: SessionCore._on_welcome,
    P.EVENTS: SessionCore._on_events,
    P.OPACKS: SessionCore._on_opacks,
    P.REFRESH: SessionCore._on_refresh,
    P.SNAPSHOT: SessionCore._on_snapshot,
    P.PRESENCE: SessionCore._on_presence,
    P.JOINED: SessionCore._on_joined,
    P.LEFT: SessionCore._on_msg,
    P.MSG: SessionCore._on_msg,
    P.SENT: SessionCore._on_msg,
    P.CONFLICT: SessionCore._on_conflict,
    P.ERROR: SessionCore._on_error,
    P.WARN: SessionCore._on_msg,
    P.BYE: SessionCore._on_bye,
    P.PONG: SessionCore._on_pong,
}
