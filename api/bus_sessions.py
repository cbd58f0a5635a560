"""Server-side sessions for bus consumers that live in another process or language.

A remote consumer (REST long-poll, or the native WebSocket with credits) gets a
:class:`ConsumerSession`. The session wraps an ordinary bus subscriber — a
``GroupMember`` for ``group`` and ``durable``, a ``Subscription`` for ``broadcast`` —
whose handler does not process events itself: it hands each delivery to the session's
bounded buffer and waits for the remote outcome. So the bus's rules hold unchanged
for remote consumers: per-stream order (one delivery of a partition at a time),
attempts recorded before risky retries, ``RetryPolicy`` delays, the dead-letter queue
after ``max_attempts``, checkpoints that advance past what the filter skipped.

How a remote outcome maps onto a delivery:

- ``ack`` → ``delivery.ack()``; ``nack`` → ``delivery.nack(reason, delay_s=)`` with the
  client's trace, a failed attempt;
- a lease that runs out (no ack, nack or extend within ``lease_s`` of the fetch) → a
  failed attempt, reason ``lease expired``;
- the consumer leaves (``DELETE`` / ``unconsume``): what it holds goes back to the
  group *without* counting as an attempt (it said it stopped, it did not fail);
- the consumer vanishes (a REST session not seen for ``ttl_s``, a WebSocket that
  drops): what it had fetched counts as a failed attempt — a poison event that kills
  its consumers reaches the dead-letter queue instead of circling forever — and what
  it had not fetched yet goes back uncounted. Its partitions go back to the group.

Everything is bounded: sessions per tenant, per connection and in total; deliveries
per session (fetched + waiting: ``buffer_max``; the subscriber's handler waits for room,
which backs the bus's own bounded queues up to its log reader); batch size; lease
length. Refusals are counted in ``/metrics`` and have stable codes.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from syncline.bus.member import GroupMember
from syncline.engine import access
from syncline.engine.consumer_wire import ConsumerSpec, Limits
from syncline.engine.errors import NotFound, SynclineError

from .logging import log
from .wire import events_wire

if TYPE_CHECKING:
    from syncline.bus import Delivery
    from syncline.bus.delivery import Batch

    from .auth import Principal
    from .gateway import Gateway


class ConsumerNotFound(NotFound):
    """No such consumer session for this caller: unknown, closed, or another tenant's or
    user's (the same answer for all three, so ids cannot be probed)."""

    code = "consumer_not_found"


class TooManyConsumers(SynclineError):
    """A bound on consumer sessions (per tenant, per connection, in total) was reached."""

    code = "too_many_consumers"
    http_status = 429


READ_PAGE = 5000  # events (at most) a remote group member's log reader reads per page
# Chunks (a page's events of one partition) a remote member queues per partition ahead of
# its consumer: bounds what a stalled consumer makes the gateway hold beyond its buffer.
QUEUE_CHUNKS = 8
REVOKE_CHECK_S = 0.1  # how often a waiting hand-over checks whether its partition moved away


class _Left(asyncio.CancelledError):
    """Raised in the subscriber's handler when its session closed: the delivery goes back
    to the group without counting as an attempt (the worker stops there, as on cancel)."""


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("syncline_bus_consumer_sessions", "Open remote consumer sessions", ["kind", "via"],
                              registry=registry)
        self.refused = Counter("syncline_bus_consumer_refused_total",
                               "Remote consumer requests refused (too_many_consumers, consumer_not_found, "
                               "invalid, tenant_violation)", ["code"], registry=registry)
        self.deliveries = Counter(
            "syncline_bus_consumer_deliveries_total",
            "Remote consumer deliveries by outcome: sent, acked, nacked, lease_expired, lost (consumer vanished "
            "holding it), returned (back to the group uncounted), revoked (its partition moved to another "
            "member: taken back uncounted), hidden (not readable by the consumer, skipped)",
            ["outcome"], registry=registry)
        self.closed = Counter("syncline_bus_consumer_sessions_closed_total",
                              "Remote consumer sessions closed, by reason (left, ttl, disconnected, shutdown)",
                              ["reason"], registry=registry)


RETURNED = "returned"  # an outcome: back to the group uncounted


class _Unit:
    """What one hand-over waits for: its deliveries' outcomes, counted down (one future
    per hand-over, not one per delivery: this is the hot path)."""

    __slots__ = ("left", "done")

    def __init__(self, n: int) -> None:
        self.left = n
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()


class Pending:
    """One delivery handed to the remote consumer: waiting in the buffer, then leased."""

    __slots__ = ("id", "delivery", "deadline", "outcome", "unit")

    def __init__(self, pid: str, delivery: Delivery, unit: _Unit) -> None:
        self.id = pid
        self.delivery = delivery
        self.deadline = 0.0  # monotonic; set when fetched
        self.outcome: str | None = None  # ack, nack, lost or returned
        self.unit = unit

    def settle(self, value: str) -> None:
        if self.outcome is None:
            self.outcome = value
            u = self.unit
            u.left -= 1
            if u.left == 0 and not u.done.done():
                u.done.set_result(None)


class ConsumerSession:
    def __init__(self, registry: ConsumerSessions, spec: ConsumerSpec, principal: Principal, *,
                 conn_id: str | None, buffer_max: int) -> None:
        self.registry = registry
        self.metrics = registry.metrics
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.principal = principal
        self.tenant = principal.tenant
        self.user = principal.user
        self.conn_id = conn_id  # a WebSocket's: the session ends with the connection (no ttl)
        self.buffer_max = buffer_max
        self.buffer: deque[Pending] = deque()  # handed over by the subscriber, not fetched yet
        self.leased: dict[str, Pending] = {}
        self.closed = False
        self.last_seen = time.monotonic()
        self._ids = itertools.count(1)
        # Delivery ids: a per-session prefix and a counter, so an id names one delivery of
        # one session (another session's ids are unknown to it, never someone else's).
        self._prefix = uuid.uuid4().hex[:8] + "."
        self._ready = asyncio.Event()  # the buffer has something
        self._room = asyncio.Event()  # the buffer has room
        self._room.set()
        self.on_ready: Callable[[], None] | None = None  # the WebSocket's push (credits permitting)
        self.subscriber: Any = None

    @property
    def via(self) -> str:
        return "ws" if self.conn_id else "rest"

    @property
    def outstanding(self) -> int:
        return len(self.buffer) + len(self.leased)

    # ------------------------------------------------------------ lifecycle

    async def start(self, bus: Any) -> None:
        s = self.spec
        from syncline.bus import RetryPolicy

        # No handler timeout: the session's lease is the timeout (it counts the attempt).
        policy = RetryPolicy(max_attempts=s.max_attempts, ack_timeout_s=None, auto_ack=False)
        if s.kind == "broadcast":
            self.subscriber = bus.subscribe(self._on_delivery, tenant=self.tenant, filter=s.filter, policy=policy,
                                            name=f"{s.group}:{self.id[:8]}", on_give_up=self._gave_up)
        else:
            # Batched: a partition's consecutive events are handed over together, so one
            # fetch can carry many events of one stream (a plain handler gets one at a time).
            make = bus.durable if s.kind == "durable" else bus.group
            self.subscriber = make(s.group, self._on_batch, batched=True, tenant=self.tenant,
                                   filter=s.filter, reader_group=f"{s.kind}:{s.group}",
                                   policy=policy, partitions=s.partitions, start_at=s.start_at,
                                   batch=min(READ_PAGE, self.buffer_max), queue_max=QUEUE_CHUNKS,
                                   member_id=f"remote-{self.via}-{self.id[:12]}", handler_in_process=False)
        await self.subscriber.start()

    async def close(self, reason: str) -> None:
        """``left`` and ``shutdown`` return everything uncounted; ``ttl`` and
        ``disconnected`` count what was fetched as failed attempts (see the module doc)."""
        if self.closed:
            return
        self.closed = True
        self.metrics.closed.labels(reason).inc()
        vanished = reason in ("ttl", "disconnected")
        for p in list(self.leased.values()):
            if vanished:
                self.metrics.deliveries.labels("lost").inc()
                p.delivery.nack(f"consumer {reason} holding the delivery (session {self.id[:12]})")
                p.settle("lost")
            else:
                self.metrics.deliveries.labels("returned").inc()
                p.settle(RETURNED)
        for p in self.buffer:
            self.metrics.deliveries.labels("returned").inc()
            p.settle(RETURNED)
        self.leased.clear()
        self.buffer.clear()
        self._ready.set()  # wake long-polls: they answer with what there is (nothing)
        self._room.set()
        if self.subscriber is not None:
            try:
                await self.subscriber.stop()
            except SynclineError as e:  # the store blinked: the partitions' leases expire instead
                log.warning("bus.consumer_stop_failed", session=self.id[:12], code=e.code)

    # ------------------------------------------------------- the subscriber's side

    async def _on_delivery(self, d: Delivery) -> None:
        """The broadcast subscriber's handler (one delivery at a time)."""
        await self._take([d])

    async def _on_batch(self, batch: Batch) -> None:
        """The group member's handler: consecutive events of one partition, in order."""
        await self._take(batch.deliveries)

    async def _take(self, deliveries: list[Delivery]) -> None:
        """Hand deliveries to the remote consumer; return once each is settled. (The unit
        of hand-over is a list so a batched subscriber handler can pass its batch.)"""
        if self.closed:
            raise _Left()
        mine = []
        for d in deliveries:
            if access.can_read(self.principal, d.event.stream):
                mine.append(d)
            else:  # (other users' inboxes, streams outside a scoped token): skipped, counted
                self.metrics.deliveries.labels("hidden").inc()
                d.ack()
        if not mine:
            return
        # A batch is at most a log page, and the page is at most buffer_max events, so this
        # bound holds (a batch larger than the bound — a page another group sharing this
        # process's log reader asked for — is taken alone, when nothing else is held).
        first = mine[0]
        while self.outstanding and self.outstanding + len(mine) > self.buffer_max:
            self._room.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._room.wait(), REVOKE_CHECK_S)
            if self.closed or self._revoked(first):
                raise _Left()
        unit = _Unit(len(mine))
        prefix, ids = self._prefix, self._ids
        pend = [Pending(prefix + str(next(ids)), d, unit) for d in mine]
        self.buffer.extend(pend)
        self._ready.set()
        if self.on_ready is not None:
            self.on_ready()
        try:
            while not unit.done.done():
                await asyncio.wait((unit.done,), timeout=REVOKE_CHECK_S)
                if not unit.done.done() and self._revoked(first):
                    self._give_back(pend)
        except asyncio.CancelledError:  # the member cancelled its worker (a lost lease)
            self._give_back(pend)
            raise
        returned = [p for p in pend if p.outcome == RETURNED]
        if returned:  # the session closed, or the partition moved away
            if not any(p.outcome == "lost" for p in pend):
                raise _Left()  # nothing was charged: every delivery goes back uncounted
            # The consumer vanished holding some of these (nacked: they count). Settle the
            # rest too, so the bus records the attempt of the first one held — a batch's
            # failures are recorded in order, and fetched ones precede waiting ones — and
            # then stops at the next hand-over (the session is closed).
            for p in returned:
                p.delivery.nack("the consumer vanished before fetching it")

    def _revoked(self, d: Delivery) -> bool:
        """Whether the member is giving up the delivery's partition (a rebalance moves it to
        another member, or the member stops): the handler must not hold it up waiting for a
        remote consumer that may never answer."""
        if not isinstance(self.subscriber, GroupMember):  # (a broadcast subscription: no partitions)
            return False
        return self.subscriber.giving_up(d.event)

    def _give_back(self, pend: list[Pending]) -> None:
        """Take these deliveries back from the consumer, uncounted (their partition moved:
        the next owner delivers them again, and an ack from this consumer is ``unknown``)."""
        ids = {p.id for p in pend}
        self.buffer = deque(p for p in self.buffer if p.id not in ids)
        for p in pend:
            self.leased.pop(p.id, None)
            p.settle(RETURNED)
        self.metrics.deliveries.labels("revoked").inc(len(pend))
        self._freed()

    async def _gave_up(self, event: Any, failure: Any) -> None:
        log.warning("bus.broadcast_gave_up", session=self.id[:12], event=event.id, reason=failure.reason[:200])

    # ------------------------------------------------------- the remote side

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def take(self, n: int) -> list[Pending]:
        """Lease up to ``n`` waiting deliveries, in the order they were handed over."""
        out: list[Pending] = []
        deadline = time.monotonic() + self.spec.lease_s
        while self.buffer and len(out) < n:
            p = self.buffer.popleft()
            p.deadline = deadline
            self.leased[p.id] = p
            out.append(p)
        if not self.buffer:
            self._ready.clear()
        if out:
            self.metrics.deliveries.labels("sent").inc(len(out))
        return out

    async def fetch(self, n: int, wait_s: float) -> list[Pending]:
        """Long-poll: lease up to ``n`` deliveries, waiting up to ``wait_s`` for the first."""
        self.touch()
        if not self.buffer and wait_s > 0 and not self.closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_s)
        self.touch()
        return self.take(n)

    def ack(self, ids: list[str]) -> list[str]:
        """Settle; returns the ids that are not (any longer) leased here."""
        self.touch()
        unknown = []
        for pid in ids:
            p = self.leased.pop(pid, None)
            if p is None:
                unknown.append(pid)
                continue
            p.delivery.ack()
            p.settle("ack")
        self.metrics.deliveries.labels("acked").inc(len(ids) - len(unknown))
        self._freed()
        return unknown

    def nack(self, ids: list[str], reason: str, delay_s: float | None, trace: str = "") -> list[str]:
        self.touch()
        unknown = []
        for pid in ids:
            p = self.leased.pop(pid, None)
            if p is None:
                unknown.append(pid)
                continue
            _nack(p.delivery, reason, delay_s, trace)
            p.settle("nack")
        self.metrics.deliveries.labels("nacked").inc(len(ids) - len(unknown))
        self._freed()
        return unknown

    def extend(self, ids: list[str], lease_s: float) -> list[str]:
        self.touch()
        deadline = time.monotonic() + lease_s
        unknown = []
        for pid in ids:
            p = self.leased.get(pid)
            if p is None:
                unknown.append(pid)
            else:
                p.deadline = max(p.deadline, deadline)
        return unknown

    def _freed(self) -> None:
        if self.outstanding < self.buffer_max:
            self._room.set()

    def expire(self, now: float) -> int:
        """Fail the leases that ran out; returns how many."""
        late = [p for p in self.leased.values() if p.deadline <= now]
        for p in late:
            del self.leased[p.id]
            p.delivery.nack(f"lease expired after {self.spec.lease_s:g}s (session {self.id[:12]})")
            p.settle("nack")
        if late:
            self.metrics.deliveries.labels("lease_expired").inc(len(late))
            self._freed()
        return len(late)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {"session": self.id, "group": s.group, "kind": s.kind, "lease_s": s.lease_s,
                               "max_batch": s.max_batch, "ttl_s": s.ttl_s, "max_attempts": s.max_attempts,
                               "buffer_max": self.buffer_max, "waiting": len(self.buffer), "leased": len(self.leased)}
        sub = self.subscriber
        if sub is not None and hasattr(sub, "owned"):
            out["partitions"] = sub.owned
        return out


def _nack(d: Delivery, reason: str, delay_s: float | None, trace: str) -> None:
    try:
        d.nack(reason, delay_s=delay_s, trace=trace)  # type: ignore[call-arg]
    except TypeError:  # a bus without traces on nack
        d.nack(reason, delay_s=delay_s)


def wire(pending: list[Pending], now: float, wall: float) -> list[dict[str, Any]]:
    """Leased deliveries as the consumer sees them: the id (for ack/nack/extend), the
    attempt, the lease's end (wall-clock ms), the event."""
    events = events_wire([p.delivery.event for p in pending])
    out = []
    deadline_ms = -1.0
    lease_ms = 0
    for p, ev in zip(pending, events):
        if p.deadline != deadline_ms:  # (a fetch leases them all with one deadline)
            deadline_ms = p.deadline
            lease_ms = int((wall + max(0.0, p.deadline - now)) * 1000)
        d = p.delivery
        out.append({"id": p.id, "attempt": d.attempt, "redelivered": d.redelivered, "lease_deadline_ms": lease_ms,
                    "event": ev})
    return out


class ConsumerSessions:
    """Every remote consumer session of one gateway, with their bounds and the sweeper
    that expires leases and closes sessions not seen for their ttl."""

    def __init__(self, gw: Gateway) -> None:
        s = gw.settings
        self.gw = gw
        self.metrics = ConsumerMetrics(gw.metrics.registry)
        self.limits = Limits(lease_max_s=s.bus_consumer_lease_max_s, batch_max=s.bus_consumer_batch_max,
                             ttl_max_s=s.bus_consumer_ttl_max_s)
        self.per_tenant = s.bus_consumers_per_tenant
        self.per_connection = s.bus_consumers_per_connection
        self.total_max = s.bus_consumers_max
        self.buffer_max = s.bus_consumer_buffer_max
        self.sessions: dict[str, ConsumerSession] = {}
        self._by_tenant: dict[str, int] = {}
        self._sweeper: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    def _refuse(self, err: SynclineError) -> SynclineError:
        self.metrics.refused.labels(err.code).inc()
        return err

    def count_refusal(self, code: str) -> None:
        self.metrics.refused.labels(code).inc()

    async def open(self, spec: ConsumerSpec, principal: Principal, *, conn_id: str | None = None,
                   conn_count: int = 0) -> ConsumerSession:
        if len(self.sessions) >= self.total_max:
            raise self._refuse(TooManyConsumers(f"this gateway serves at most {self.total_max} consumer sessions",
                                                limit="total"))
        if self._by_tenant.get(principal.tenant, 0) >= self.per_tenant:
            raise self._refuse(TooManyConsumers(f"at most {self.per_tenant} consumer sessions per tenant",
                                                limit="per_tenant"))
        if conn_id is not None and conn_count >= self.per_connection:
            raise self._refuse(TooManyConsumers(f"at most {self.per_connection} consumers per connection",
                                                limit="per_connection"))
        bus = self.gw.bus
        if bus is None:
            from syncline.bus import Bus

            bus = self.gw.bus = Bus(self.gw.store)
        session = ConsumerSession(self, spec, principal, conn_id=conn_id, buffer_max=self.buffer_max)
        self.sessions[session.id] = session  # (counted before the await: concurrent joins see it)
        self._by_tenant[principal.tenant] = self._by_tenant.get(principal.tenant, 0) + 1
        try:
            await session.start(bus)
        except BaseException:
            session.closed = True
            self._forget(session)
            raise
        self.metrics.sessions.labels(spec.kind, session.via).inc()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="bus-consumer-sweeper")
        return session

    def get(self, session_id: str, principal: Principal) -> ConsumerSession:
        """The caller's session, or ``consumer_not_found`` (another tenant's or user's included)."""
        s = self.sessions.get(session_id)
        if s is None or s.closed or s.tenant != principal.tenant or s.user != principal.user:
            raise self._refuse(ConsumerNotFound("no such consumer session", session=session_id[:64]))
        return s

    async def close(self, session: ConsumerSession, reason: str) -> None:
        if self.sessions.get(session.id) is session:
            self._forget(session)
            self.metrics.sessions.labels(session.spec.kind, session.via).dec()
        await session.close(reason)

    def _forget(self, session: ConsumerSession) -> None:
        if self.sessions.pop(session.id, None) is not None:
            n = self._by_tenant.get(session.tenant, 1) - 1
            if n > 0:
                self._by_tenant[session.tenant] = n
            else:
                self._by_tenant.pop(session.tenant, None)

    async def close_all(self, reason: str = "shutdown") -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await asyncio.gather(*(self.close(s, reason) for s in list(self.sessions.values())), *self._closing,
                             return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                try:
                    s.expire(now)
                    if s.conn_id is None and now - s.last_seen > s.spec.ttl_s:
                        log.info("bus.consumer_expired", session=s.id[:12], group=s.spec.group)
                        t = asyncio.get_running_loop().create_task(s.close("ttl"))
                        self._closing.add(t)
                        t.add_done_callback(self._closing.discard)
                        self._forget(s)
                        self.metrics.sessions.labels(s.spec.kind, s.via).dec()
                except Exception:  # one broken session must not stop the sweeper
                    log.exception("bus.consumer_sweep_failed", session=s.id[:12])
