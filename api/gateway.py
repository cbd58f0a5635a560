"""The running gateway's shared state: store, verifier, hub, presence, connections.

One :class:`Gateway` per app; routes and WebSocket handlers reach it through
``app.state.gateway``. It owns the background jobs (presence sweeper) and the
graceful shutdown: every open connection is told why it is being closed, its
queued messages are flushed, then it is closed with 1001.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from syncline.engine.events import Actor, NewEvent, Retention
from syncline.engine.ports import EventStore
from syncline.store.records_service import RecordsService

from .activity import ActivityProjections
from .auth import Principal, TokenVerifier
from .bus_sessions import ConsumerSessions
from .follower import LogFollower
from .hub import Hub, room_channel
from .limits import ConnectionCaps, rest_windows
from .logging import log, security_log
from .metrics import Metrics
from .presence import PresenceRegistry
from .quota import DocQuota
from .ratelimit import BanList, SharedBanList
from .revocations import REVOCATION_FILTER, REVOCATIONS_STREAM, TOKEN_REVOKED, Revocation, revocation_from
from .security_events import SecurityAggregator, clip, iso
from .settings import Settings
from .token_expiry import ExpiryWatch
from .tracing import span, trace_meta
from .ws_yjs import DocRooms

if TYPE_CHECKING:
    from syncline.bus import Bus

    from .presence_redis import RedisPresence

AUDIT_STREAM = "$audit"
SECURITY_STREAM = "$security"


class Closable(Protocol):
    conn_id: str
    principal: Principal

    async def shutdown(self, reason: str) -> None: ...

    def token_ended(self, code: str) -> None:
        """Close now with 4401 and this reason (``token_expired`` or ``token_revoked``)."""
        ...


class Clock(Protocol):
    """Where the gateway reads the time: the system's, or a test's hand-moved one."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class Gateway:
    """Collaborators are passed in (``store``, ``records``, ``clock``) or built here from
    the settings; nothing is attached after construction."""

    def __init__(self, settings: Settings, store: EventStore, *, owns_store: bool, records: RecordsService,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = store
        self.owns_store = owns_store
        self.records = records
        self.clock: Clock = clock or SystemClock()
        self.verifier = TokenVerifier(settings)
        self.metrics = Metrics()
        # Store latency histograms and the writer's trace in each event's meta (store/instruments.py)
        instrument = getattr(store, "instrument", None)
        if instrument is not None:
            instrument(observe=self.metrics.observe_store, trace_meta=trace_meta)
        self.hub = Hub(settings.redis_url, metrics=self.metrics)
        self.presence = PresenceRegistry(ttl_s=settings.presence_ttl_s, grace_s=settings.membership_grace_s)
        self.bans: BanList = (SharedBanList(settings.redis_url, metrics=self.metrics) if settings.redis_url
                              else BanList())
        self.connections: dict[str, Closable] = {}
        # Limits (api/limits.py, api/quota.py; docs/security.md#limits)
        self.conn_caps = ConnectionCaps(settings.ws_max_connections_per_user, settings.ws_max_connections_per_ip)
        self.rest_windows = rest_windows(settings, self.metrics)
        self.quota = DocQuota(self, settings.doc_quota_bytes_per_tenant)
        self.shutting_down = False
        self.started_at = self.clock.time()
        self.bus: Bus | None = None  # made on first use (api/routes_bus.py)
        self.consumers = ConsumerSessions(self)  # remote bus consumers (api/bus_sessions.py)
        self.follower = LogFollower(self)
        self.revocations = self.verifier.revocations
        self.expiry = ExpiryWatch(self)
        self.yjs = DocRooms(self)
        self.redis_presence: RedisPresence | None = None
        if settings.redis_url:
            from .presence_redis import RedisPresence

            interval = self._sweep_interval()
            self.redis_presence = RedisPresence(settings.redis_url, ttl_s=settings.presence_ttl_s,
                                                grace_s=settings.membership_grace_s, online_s=interval * 3)
        self._sweeper: asyncio.Task | None = None
        self._pruner: asyncio.Task | None = None
        self.last_prune: dict[str, Any] | None = None
        self.activity = ActivityProjections(store, feed_keep=settings.feed_keep, presence_keep=settings.feed_keep)
        self.security_windows = SecurityAggregator(window_s=settings.security_window_s,
                                                   max_keys=settings.security_aggregate_max,
                                                   samples=settings.security_samples)
        self._security_flusher: asyncio.Task | None = None
        signer = getattr(store, "signer", None)  # signed audit checkpoints (store/audit.py)
        if signer is not None:
            self.metrics.audit_checkpoints.set_function(lambda: signer.written)
            self.metrics.audit_checkpoint_failures.set_function(lambda: signer.failed)

    async def start(self) -> None:
        await self.hub.start()
        await self.follower.start()
        await self.load_revocations()  # (after the follower starts: nothing falls between)
        self.expiry.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="presence-sweeper")
        self._security_flusher = asyncio.create_task(self._flush_security_windows(), name="security-flusher")
        if self.settings.prune_interval_s > 0:
            self._pruner = asyncio.create_task(self._prune(), name="prune-job")
        if self.settings.activity_projections:
            self.activity.start()

    async def close(self) -> None:
        await self.shutdown("server stopping")
        for task in (self._sweeper, self._pruner, self._security_flusher):
            if task:
                task.cancel()
        try:  # the open windows' summaries, before the store closes
            await self.flush_security(everything=True)
        except Exception:
            log.exception("security.flush_failed")
        await self.consumers.close_all()  # (their partitions go back to their groups)
        await self.activity.close()  # (before the store closes: no read left in flight)
        await self.follower.close()
        await self.expiry.close()
        await self.yjs.close()
        await self.hub.close()
        await self.bans.close()
        await self.rest_windows.close()
        if self.redis_presence is not None:
            await self.redis_presence.close()
        if self.owns_store:
            await self.store.close()

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Tell every connection why, flush what is queued for it, close it (1001)."""
        if self.shutting_down:
            return
        self.shutting_down = True
        conns = list(self.connections.values())
        if conns:
            log.info("gateway.shutdown", connections=len(conns), reason=reason)
            await asyncio.wait(
                [asyncio.ensure_future(c.shutdown(reason)) for c in conns],
                timeout=self.settings.shutdown_grace_s,
            )

    async def _prune(self) -> None:
        """The retention job (store.maintenance.prune_job): snapshot documents, delete
        ``standard`` events past the retention period (never ``critical`` ones, never past a
        durable checkpoint). Runs once shortly after start, then every ``prune_interval_s``."""
        await asyncio.sleep(min(60.0, self.settings.prune_interval_s))
        while True:
            try:
                # store.maintenance.prune_job snapshots documents first, so pruning their
                # old updates never loses a document; then prunes the log and the bus ids.
                from syncline.store.maintenance import prune_job

                with span("prune.job"):
                    r = await prune_job(self.store, retention_s=self.settings.retention_s)
                self.last_prune = {"at": self.clock.time(), "events_deleted": r.events_deleted,
                                   "held_back_by_checkpoint": r.held_back_by_checkpoint}
                if r.events_deleted:
                    log.info("prune.done", **self.last_prune)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prune.failed")
            await asyncio.sleep(self.settings.prune_interval_s)

    # -- audit and security --------------------------------------------------

    async def audit(self, tenant: str, type_: str, principal: Principal, data: dict[str, Any], **meta: Any) -> None:
        """Append an audit event to the tenant's ``$audit`` stream (kept forever)."""
        await self.store.append(
            tenant,
            AUDIT_STREAM,
            [
                NewEvent(
                    type_,
                    data={**data, "by": {"user": principal.user, "tenant": principal.tenant}},
                    actor=Actor(principal.user, principal.client),
                    meta={k: v for k, v in meta.items() if v is not None},
                    retention=Retention.CRITICAL,
                )
            ],
        )

    # -- token revocation (api/revocations.py) ----------------------------------

    async def revoke(self, tenant: str, data: dict[str, Any], principal: Principal | None, *,
                     reason: str = "") -> tuple[Revocation, int]:
        """Record a revocation in the tenant's log (critical) and apply it here at once;
        every other gateway applies it when its follower reads the event. Returns the
        revocation and its log position."""
        r = revocation_from(tenant, data)
        by = {"user": principal.user, "tenant": principal.tenant} if principal else {"user": "cli"}
        result = await self.store.append(tenant, REVOCATIONS_STREAM, [NewEvent(
            TOKEN_REVOKED, data={**r.to_data(), "reason": reason[:500], "by": by},
            actor=Actor(principal.user if principal else "cli", principal.client if principal else ""),
            retention=Retention.CRITICAL)])
        self.apply_revocation(r)
        return r, result.streams[0].first_position

    def apply_revocation(self, r: Revocation) -> int:
        """Remember a revocation and close the matching connections (4401 token_revoked)."""
        if self.revocations.add(r):  # (the gateway that recorded it reads it again from the log)
            self.metrics.revocations.inc()
        closed = 0
        for conn in list(self.connections.values()):
            if r.matches(conn.principal):
                conn.token_ended("token_revoked")
                closed += 1
        if closed:
            self.metrics.revoked_sessions.inc(closed)
            log.info("token.revoked_sessions_closed", tenant=r.tenant, closed=closed)
        return closed

    def revocation_from_log(self, event: Any) -> None:
        try:
            self.apply_revocation(revocation_from(event.tenant, event.data))
        except Exception:  # a malformed event must not stop the follower
            log.exception("token.revocation_unreadable", position=event.position)

    async def load_revocations(self) -> int:
        """Every revocation in the log, at start: each tenant's ``$revocations`` stream (an
        indexed read per tenant, not a scan of the whole log)."""
        list_tenants = getattr(self.store, "list_tenants", None)
        if list_tenants is None:
            return await self._scan_revocations()
        n = 0
        for tenant in await list_tenants():
            version = 0
            while True:
                page = await self.store.read_stream(tenant, REVOCATIONS_STREAM, from_version=version + 1,
                                                    limit=1000)
                for e in page:
                    if e.type == TOKEN_REVOKED:
                        self.revocation_from_log(e)
                        n += 1
                if len(page) < 1000:
                    break
                version = page[-1].version
        return n

    async def _scan_revocations(self) -> int:
        after, n = 0, 0
        while True:
            page = await self.store.read_log(None, after=after, limit=1000, filter=REVOCATION_FILTER,
                                             all_tenants=True)
            for e in page.events:
                if e.stream == REVOCATIONS_STREAM and e.type == TOKEN_REVOKED:
                    self.revocation_from_log(e)
                    n += 1
            if page.next_after <= after or page.next_after >= page.head:
                return n
            after = page.next_after

    async def security_event(self, principal: Principal | None, kind: str, **details: Any) -> None:
        """Count a refused attempt, and record it in the offender's tenant log, aggregated:
        the first of a (tenant, user, kind) window at once, the rest as one summary when
        the window closes (api/security_events.py)."""
        self.metrics.security_events.labels(kind).inc()
        if principal is None:
            security_log.warning("security." + kind, user=None, tenant=None, **details)
            return
        now = self.clock.time()
        agg = self.security_windows
        outcome = agg.add(principal.tenant, principal.user, principal.client, kind, details, now)
        if outcome == "expired":
            await self.flush_security(now)
            outcome = agg.add(principal.tenant, principal.user, principal.client, kind, details, now)
        if outcome == "overflow":
            self.metrics.security_overflow.inc()
            return
        if outcome != "record":
            return  # folded into the window's summary
        security_log.warning("security." + kind, user=principal.user, tenant=principal.tenant, **details)
        await self._record_security(principal.tenant, principal.user, principal.client, kind,
                                    {**clip(details), "count": 1, "first": iso(now), "last": iso(now)})

    async def flush_security(self, now: float | None = None, *, everything: bool = False) -> int:
        """Write the summaries of the windows that have closed (all with ``everything``).
        Returns how many summaries were written."""
        agg = self.security_windows
        written = 0
        for w in agg.due(self.clock.time() if now is None else now, everything=everything):
            if not w.count:
                continue  # only the first attempt came: it is recorded already
            security_log.warning("security." + w.kind, user=w.user, tenant=w.tenant, count=w.count,
                                 aggregated=True)
            await self._record_security(w.tenant, w.user, w.client, w.kind, w.summary(agg.window_s))
            written += 1
        if agg.overflow:
            security_log.warning("security.aggregate_full", dropped=agg.overflow, max_keys=agg.max_keys)
            agg.overflow = 0
        return written

    async def _record_security(self, tenant: str, user: str, client: str, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.store.append(
                tenant,
                SECURITY_STREAM,
                [
                    NewEvent(
                        "security." + kind.replace("_", "-"),
                        data={"user": user, **data},
                        actor=Actor(user, client),
                        retention=Retention.CRITICAL,
                    )
                ],
            )
            self.metrics.security_recorded.labels(kind).inc()
        except Exception:  # the log line is the fallback record
            log.exception("security.record_failed")

    async def _flush_security_windows(self) -> None:
        interval = max(0.05, min(self.settings.security_window_s / 2, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_security()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("security.flush_failed")

    # -- presence ------------------------------------------------------------

    async def record_presence(self, tenant: str, room: str, user: str, client: str, joined: bool) -> None:
        try:
            await self.store.append(
                tenant,
                f"room/{room}",
                [NewEvent("presence.joined" if joined else "presence.left", data={"user": user, "client": client},
                          actor=Actor(user, client))],
            )
        except Exception:
            log.exception("presence.record_failed", room=room)

    def _sweep_interval(self) -> float:
        return max(0.05, min(self.settings.presence_ttl_s, self.settings.membership_grace_s, 20.0) / 4)

    # -- presence mirror (Redis), best effort ----------------------------------

    def mirror(self, coro_factory) -> None:
        """Run a Redis presence update in the background (never blocks or fails a message)."""
        if self.redis_presence is None:
            return
        task = asyncio.ensure_future(coro_factory(self.redis_presence))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def room_presence(self, tenant: str, room: str) -> dict[str, Any]:
        local = self.presence.snapshot(tenant, room, self.clock.monotonic())
        if self.redis_presence is None:
            return local
        from .presence_redis import merge_snapshots

        return merge_snapshots(local, await self.redis_presence.snapshot(tenant, room))

    async def _sweep(self) -> None:
        p = self.presence
        interval = self._sweep_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                if self.redis_presence is not None:
                    await self.redis_presence.touch(
                        (m.tenant, room, m.user, m.client, bool(m.connections))
                        for m in list(p.members.values()) if m.detached_at is None for room in m.rooms)
                now = self.clock.monotonic()
                for tenant, room, e in p.expire_states(now):
                    self.hub.publish(
                        room_channel(tenant, room),
                        {"t": "presence", "room": room, "user": e.user, "conn": e.conn, "state": None},
                    )
                for m in p.expired_members(now):
                    rooms = list(m.rooms)
                    p.forget((m.tenant, m.user, m.client))
                    for room in rooms:
                        self.mirror(lambda rp, m=m, room=room: rp.left(m.tenant, room, m.user, m.client))
                        self.hub.publish(
                            room_channel(m.tenant, room),
                            {"t": "left", "room": room, "user": m.user, "client": m.client},
                        )
                        await self.record_presence(m.tenant, room, m.user, m.client, False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("presence.sweep_failed")
