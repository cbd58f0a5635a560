"""The native WebSocket protocol at ``/v1/ws`` (docs/protocol.md; codec in engine/protocol.py).

Subprotocol ``syncline.v1.msgpack`` (default) → msgpack binary frames;
``syncline.v1.json`` → JSON text frames. One frame, one message, ``t`` names it.

What the protocol does is decided by :class:`engine.session.ServerSession` (pure, the
same core the simulator runs); this module is its I/O shell: a reader loop (frames in →
session), a writer task (the outbox), a ticker (heartbeat, ack timeouts), and a read
task per subscription performing the session's log reads. The log is the queue, so
resume after a disconnect is "subscribe after my position".
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import msgpack
from litestar import WebSocket, websocket
from opentelemetry.trace import SpanKind

from syncline.engine import protocol as P
from syncline.engine.access import reads_everything
from syncline.engine.documents import CRDT_UPDATE
from syncline.engine.errors import ProtocolError, StoreUnavailable, SynclineError
from syncline.engine.events import Actor, NewEvent
from syncline.engine.session import (
    CLIENT_RE,
    ROOM_MESSAGE,
    Ban,
    BusRequest,
    Close,
    CommitOps,
    CountBehind,
    Deliver,
    Identity,
    JoinRoom,
    LeaveRoom,
    ReadLog,
    Rebind,
    SecurityEvent,
    Send,
    ServerSession,
    SessionConfig,
    SetPresence,
    StoreMessage,
    TakeSnapshot,
    VerifyToken,
    WaitLog,
)
from syncline.store.gcpause import collector_paused

from .auth import READ, Principal
from .bus_ws import ConnectionBus
from .errors import (
    WS_FORBIDDEN,
    WS_GOING_AWAY,
    WS_PROTOCOL,
    WS_RATE_LIMITED,
    WS_STALE,
    WS_UNAUTHENTICATED,
    Unauthenticated,
    ws_close_code,
)
from .gateway import Gateway
from .hub import room_channel, user_channel
from .logging import clear, log, login_refused
from .ops import count_conflicts, count_rejections
from .quota import QuotaExceeded
from .settings import Settings
from .tracing import (
    TRACEPARENT,
    delivery_spans,
    detach_trace,
    parse_traceparent,
    sdk_installed,
    trace_active,
    traced,
)
from .wire import events_wire
from .wsbase import Outbox, authenticate, bind_connection, new_conn_id, refuse

ENDPOINT = "native"
# Error codes of the access rule (engine/access.py), counted in syncline_access_refused_total.
ACCESS_CODES = frozenset({"forbidden", "out_of_scope", "system_stream_forbidden"})
MESSAGES_IN_FLIGHT = 256  # say/dm appends one connection may have uncommitted at once


def session_config(s: Settings) -> SessionConfig:
    return SessionConfig(
        heartbeat_ms=int(s.heartbeat_interval_s * 1000), stale_ms=int(s.stale_after_s * 1000),
        batch_window_ms=s.batch_window_ms, batch_events_max=s.event_batch_max,
        window_batches_max=s.unacked_batches_max, ack_timeout_ms=int(s.ack_timeout_s * 1000),
        max_behind=s.max_behind, rate_limit_messages=s.rate_limit_messages,
        rate_limit_window_ms=int(s.rate_limit_window_s * 1000), rate_limit_ban_ms=int(s.rate_limit_ban_s * 1000),
        presence_ttl_ms=int(s.presence_ttl_s * 1000), rooms_max=s.rooms_max_per_connection,
    )


class NativeConnection:
    """The I/O shell around one :class:`engine.session.ServerSession`: it moves frames,
    performs the session's effects against the store, the hub and presence, and hands
    the results back. What the protocol *does* is decided in the session."""

    def __init__(self, gw: Gateway, socket: WebSocket, principal: Principal, subprotocol: str, client: str) -> None:
        self.gw = gw
        self.s = gw.settings
        self.socket = socket
        self.principal = principal
        self.subprotocol = subprotocol
        self.conn_id = new_conn_id()
        self.session = ServerSession(
            Identity(principal.tenant, principal.user, frozenset(principal.perms), principal.scopes),
            session_config(gw.settings),
            session_id=self.conn_id, client=client, now_ms=self._ms(), encode_events=events_wire,
            expires_ms=self._expires_ms(principal))
        self.member = (principal.tenant, principal.user, self.session.client)
        self.outbox = Outbox(socket, ENDPOINT, gw.metrics)
        self.pending: list[dict] = []
        # id(events msg) -> commit time (µs) of its newest event, until its frame is queued:
        # the outbox observes syncline_delivery_latency_seconds when the frame is written.
        self._timed: dict[int, int] = {}
        # The trace this connection's messages belong to unless they name their own: the
        # upgrade's traceparent header, or the hello's field (api/tracing.py).
        self.trace_parent: Any = (socket.scope.get("state") or {}).get("trace_parent")
        self._flush_handle: asyncio.TimerHandle | None = None
        self.rooms: set[str] = set()  # rooms whose hub channel this connection listens on
        self._deliver: Callable[[Any], None] = self._on_hub
        self._tasks: set[asyncio.Task] = set()
        self._reads: dict[str, tuple[int, asyncio.Task]] = {}  # sub id -> (generation, its read task)
        self._message_slots = asyncio.Semaphore(MESSAGES_IN_FLIGHT)
        self.bus = ConnectionBus(self)  # publish and bus consumers (api/bus_ws.py)

    def _ms(self) -> int:
        return int(self.gw.clock.monotonic() * 1000)

    def _expires_ms(self, p: Principal) -> int:
        """The token's ``exp`` (wall seconds) on the session's clock (monotonic ms)."""
        return self._ms() + int((p.exp - self.gw.clock.time()) * 1000)

    def token_ended(self, code: str) -> None:
        """The token was revoked (the gateway matched a revocation): bye, then 4401."""
        for e in self.session.revoked():
            if type(e) is Send:
                self.send(e.msg, urgent=True)
            elif type(e) is Close:
                self.close(e.code, e.reason)

    async def _reauth(self, e: VerifyToken) -> None:
        """An in-band ``auth``: verify the new token; the session decides whether it
        becomes the connection's (same user and tenant)."""
        gw, session = self.gw, self.session
        try:
            p = gw.verifier.verify(e.token)
        except Unauthenticated as err:
            gw.metrics.auth_failures.labels(err.code).inc()
            gw.metrics.auth_refreshes.labels(err.code).inc()
            login_refused(self.socket.scope, endpoint=ENDPOINT, code=err.code, stage="in_band")
            await self.perform(session.auth_failed(e.ref, err))
            return
        who = Identity(p.tenant, p.user, frozenset(p.perms), p.scopes)  # (the new token's scopes apply from now)
        effects = session.reauthed(e.ref, who, self._expires_ms(p), self._ms(), exp=p.exp)
        if session.who is who:
            self.principal = p
            gw.metrics.auth_refreshes.labels("ok").inc()
        else:
            gw.metrics.auth_refreshes.labels("refused").inc()
        await self.perform(effects)

    @property
    def client(self) -> str:
        return self.session.client

    # -- outgoing ------------------------------------------------------------

    def send(self, msg: dict, *, urgent: bool | None = None) -> None:
        """Queue a message. Latency-critical ones go at once (after anything already
        waiting, to keep order); the rest wait up to the batching window."""
        if self.outbox.closed:
            if self._timed:
                self._timed.clear()
            return
        if urgent is None:
            urgent = msg.get("t") in P.LATENCY_CRITICAL
        if urgent or self.s.batch_window_ms <= 0:
            self.flush()
            self.outbox.put(P.encode_frame(msg, self.subprotocol),
                            self._timed.pop(id(msg), None) if self._timed else None)
            return
        self.pending.append(msg)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.s.batch_window_ms / 1000, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        msgs, self.pending = self.pending, []
        timed = self._timed
        for m in msgs:
            self.outbox.put(P.encode_frame(m, self.subprotocol), timed.pop(id(m), None) if timed else None)

    def close(self, code: int, reason: str) -> None:
        self.flush()
        self.outbox.close(code, reason)

    async def shutdown(self, reason: str) -> None:
        await self.perform(self.session.shutdown(reason))
        await self.outbox.drain(self.s.shutdown_grace_s)

    def _on_hub(self, msg: Any) -> None:
        if isinstance(msg, dict):
            if msg.get("conn") == self.conn_id and msg.get("t") in (P.MSG, P.PRESENCE):
                return  # no echo of one's own broadcast or presence
            if not self.session.admits(msg):  # a scoped token: not in its scopes
                self.gw.metrics.access_hidden.labels("ws_live").inc()
                return
            self.send(msg)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- lifecycle -----------------------------------------------------------

    def _attach(self) -> set[str]:
        gw = self.gw
        rooms = gw.presence.attach(self.member, self.conn_id)
        for room in rooms:  # membership survives reconnection
            self._listen(room)
        return rooms

    def _listen(self, room: str) -> None:
        if room not in self.rooms:
            self.rooms.add(room)
            self.gw.hub.subscribe(room_channel(self.principal.tenant, room), self._deliver)

    def _detach(self) -> None:
        gw, p = self.gw, self.principal
        for room in self.rooms:
            gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
            gw.mirror(lambda rp, room=room: rp.state(p.tenant, room, p.user, self.conn_id, None))
            gw.hub.publish(room_channel(p.tenant, room),
                           {"t": P.PRESENCE, "room": room, "user": p.user, "conn": self.conn_id, "state": None})
        self.rooms = set()
        gw.presence.detach(self.member, self.conn_id, self.gw.clock.monotonic())

    async def run(self) -> None:
        gw, p = self.gw, self.principal
        gw.hub.subscribe(user_channel(p.tenant, p.user), self._deliver)
        rooms = self._attach()
        head = await gw.store.head_position()
        await self.perform(self.session.welcome(head=head, rooms=sorted(rooms)))
        self.spawn(self._ticker())
        received = gw.metrics.ws_messages.labels(ENDPOINT, "in")
        while not self.outbox.closed:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            received.inc()
            frame = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            try:
                if frame is None:
                    raise P.InvalidMessage("empty frame")
                msg = _decode(frame, self.subprotocol)
            except ProtocolError as e:
                await self.perform(self.session.invalid_frame(e))
                return
            parent = self._message_trace(msg)
            if parent is None and not sdk_installed():  # the untraced path: no span object
                await self.perform(self.session.receive(msg, self._ms(),
                                                        wall_us=int(self.gw.clock.time() * 1_000_000)))
                continue
            with traced(parent, "ws." + str(msg.get("t")), {"syncline.conn": self.conn_id},
                        kind=SpanKind.SERVER):
                await self.perform(self.session.receive(msg, self._ms(),
                                                        wall_us=int(self.gw.clock.time() * 1_000_000)))

    def _message_trace(self, msg: dict) -> Any:
        """The trace a message belongs to: its own ``traceparent``, else the connection's
        (a ``hello`` with one sets the connection's). Invalid values are ignored, counted."""
        value = msg.get(TRACEPARENT)
        if value is None:
            return self.trace_parent
        parent = parse_traceparent(value)
        is_hello = msg.get("t") == P.HELLO
        if parent is None:
            self.gw.metrics.traceparent_invalid.labels("ws_hello" if is_hello else "ws_message").inc()
            return self.trace_parent
        if is_hello:
            self.trace_parent = parent
        return parent

    async def _ticker(self) -> None:
        step = max(0.02, min(self.s.stale_after_s / 4, self.s.ack_timeout_s / 2, 5.0))
        while not self.outbox.closed:
            due = self.session.next_deadline()  # (the token's expiry may come before the step)
            await asyncio.sleep(step if due is None else max(0.005, min(step, (due - self._ms()) / 1000)))
            await self.perform(self.session.tick(self._ms()))

    async def cleanup(self) -> None:
        gw, p = self.gw, self.principal
        for t in list(self._tasks):
            t.cancel()
        gw.hub.unsubscribe(user_channel(p.tenant, p.user), self._deliver)
        self._detach()
        await self.bus.close()

    # -- effects ---------------------------------------------------------------

    async def perform(self, effects: list) -> None:
        for e in effects:
            kind = type(e)
            if kind is Send:
                if e.msg.get("t") == P.WARN and e.msg.get("code") == "rate_limited":
                    self.gw.metrics.rate_limited.labels("warn").inc()
                elif e.msg.get("t") == P.ERROR and e.msg.get("code") in ACCESS_CODES:
                    self.gw.metrics.access_refused.labels(ENDPOINT, e.msg["code"]).inc()
                elif e.msg.get("t") == P.OPACKS:
                    for r in e.msg.get("results") or ():
                        if isinstance(r, dict) and r.get("reason") == "out_of_scope":
                            self.gw.metrics.access_refused.labels(ENDPOINT, "out_of_scope").inc()
                elif e.msg.get("t") == P.ERROR and e.msg.get("code") == "too_many_rooms":
                    self.gw.metrics.limits_hit.labels("rooms_per_connection").inc()
                self.send(e.msg, urgent=True if e.urgent else None)
            elif kind in (ReadLog, WaitLog, CountBehind):
                old = self._reads.get(e.sub)
                if old is not None and old[0] != e.gen and old[1] is not asyncio.current_task():
                    old[1].cancel()  # a replaced or rewound subscription: its read is moot
                self._reads[e.sub] = (e.gen, self.spawn(self._read(e)))
            elif kind is BusRequest:
                if e.msg["t"] == P.PUBLISH:  # (committed in the background, as say/dm: reading goes on)
                    await self._message_slots.acquire()
                    self.spawn(self._publish(e.msg))
                else:
                    await self.bus.handle(e.msg)
            elif kind is VerifyToken:
                await self._reauth(e)
            elif kind is Close:
                if e.code == WS_UNAUTHENTICATED:
                    if e.reason == "token_expired":
                        self.gw.metrics.token_expired_sessions.labels(ENDPOINT).inc()
                    log.info("ws.token_ended", reason=e.reason)
                if e.code == WS_RATE_LIMITED:
                    log.warning("ws.rate_limited_disconnect", ban_s=self.s.rate_limit_ban_s)
                elif e.code == WS_STALE:
                    log.info("ws.stale")
                self.close(e.code, e.reason)
            else:
                await self._perform_io(e)

    async def _perform_io(self, e: Any) -> None:
        gw, p, session = self.gw, self.principal, self.session
        kind = type(e)
        try:
            if kind is CommitOps:
                await self.perform(session.ops_done(e.ref, await self._commit(e), e))
            elif kind is StoreMessage:
                # Not awaited here: the connection keeps reading while its messages commit,
                # and messages from many (or one fast) senders share the store's group commit.
                # At most MESSAGES_IN_FLIGHT per connection; then reading waits.
                await self._message_slots.acquire()
                self.spawn(self._store_message(e))
            elif kind is Deliver:
                gw.follower.messages.sent(p.tenant, e.stream, e.msg)
            elif kind is JoinRoom:
                await self._join(e.room)
            elif kind is LeaveRoom:
                await self._leave(e.room)
            elif kind is SetPresence:
                limit = self.s.presence_state_max_bytes
                if limit and e.state is not None and _encoded_size(e.state) > limit:
                    gw.metrics.limits_hit.labels("presence_state").inc()
                    self.send({"t": P.ERROR, "code": "presence_too_large", "details": {"room": e.room},
                               "message": f"a presence state is at most {self.s.presence_state_max_bytes} bytes"})
                    return
                self._set_presence(e.room, e.state)
            elif kind is Rebind:
                self._detach()
                self.member = (p.tenant, p.user, e.client)
                self._attach()
            elif kind is TakeSnapshot:
                from syncline.engine.syncdata import chunk_snapshot
                from syncline.store.sync import state_snapshot

                snap = await state_snapshot(gw.store, p.tenant, streams=e.streams, prefixes=e.prefixes,
                                            registry=gw.records.config.registry,
                                            readable=None if reads_everything(p) else session.may_read)
                chunks = chunk_snapshot(snap.position, snap.content, snap.checksum, self.s.snapshot_chunk_bytes)
                await self.perform(session.snapshot_ready(e.ref, chunks, snap.position))
            elif kind is Ban:
                gw.metrics.rate_limited.labels("disconnect").inc()
                gw.bans.ban((p.tenant, p.user), self.gw.clock.monotonic() + self.s.rate_limit_ban_s)
            elif kind is SecurityEvent:
                await gw.security_event(p, e.kind, conn=self.conn_id, **e.details)
        except SynclineError as err:
            if kind is CommitOps:
                await self.perform(session.ops_failed(e.ref, err))
            elif kind is StoreMessage:
                await self.perform(session.message_failed(e, err))
            else:
                self.send({"t": P.ERROR, "code": err.code, "message": err.public_message})

    async def _publish(self, msg: dict) -> None:
        try:
            await self.bus.handle(msg)
        finally:
            self._message_slots.release()

    async def _store_message(self, e: StoreMessage) -> None:
        gw, p, session = self.gw, self.principal, self.session
        try:
            r = await gw.store.append(p.tenant, e.stream, [NewEvent(e.type, data=e.data, actor=Actor(
                p.user, self.client))], idempotency_key=e.idempotency_key)
        except SynclineError as err:
            await self.perform(session.message_failed(e, err))
            return
        finally:
            self._message_slots.release()
        if not r.duplicate:
            gw.metrics.messages_stored.labels("room" if e.type == ROOM_MESSAGE else "dm").inc()
        await self.perform(session.message_stored(e, r.streams[0].first_position, r.duplicate))

    async def _commit(self, e: CommitOps) -> list[dict | None]:
        """Record ops through the records service; Yjs updates as ``crdt.update`` events,
        each with its op id as the idempotency key (a resent op is stored once)."""
        gw, p = self.gw, self.principal
        results: list[dict | None] = [None] * e.size
        if e.records:
            outcomes = await gw.records.submit_wire(p.tenant, [op for _, op in e.records])
            for (i, _), o in zip(e.records, outcomes):
                results[i] = o
            gw.metrics.events_appended.labels("ops").inc(len(e.records))
            count_rejections(gw, outcomes)
            count_conflicts(gw, [op for _, op in e.records], outcomes)
        for d in e.docs:  # (validated by the session)
            try:
                await gw.quota.check(p.tenant, len(d.update))
            except QuotaExceeded as q:
                results[d.index] = {"kind": "rejected", "op": d.op_id, "reason": q.code, "detail": q.message[:200]}
                continue
            r = await gw.store.append(p.tenant, d.stream, [NewEvent(
                CRDT_UPDATE, data=d.update, actor=Actor(p.user, d.client), meta={"op": d.op_id})],
                idempotency_key=f"op:{d.op_id}")
            results[d.index] = ({"kind": "duplicate", "op": d.op_id, "stream": d.stream,
                                 "original": {"kind": "applied", "op": d.op_id}} if r.duplicate
                                else {"kind": "applied", "op": d.op_id, "stream": d.stream})
            gw.metrics.events_appended.labels("ops").inc()
        return results

    # subscriptions: reads of the log on behalf of the session

    async def _read(self, e: Any) -> None:
        store, tenant, session = self.gw.store, self.principal.tenant, self.session
        if trace_active():
            detach_trace()  # a subscription's reads are not part of the message that opened it
        try:
            if type(e) is ReadLog:
                page = await self._through_outages(
                    lambda: store.read_log(tenant, after=e.after, limit=e.limit, filter=e.filter))
                hidden = session.stats["events_hidden"]
                effects = session.log_read(e.sub, e.gen, page.events, page.next_after, page.head, self._ms())
                if session.stats["events_hidden"] != hidden:
                    self.gw.metrics.access_hidden.labels(ENDPOINT).inc(session.stats["events_hidden"] - hidden)
                if page.events:
                    self._note_delivery(page.events, effects)
                    spans = delivery_spans(page.events, "ws.deliver", {"syncline.conn": self.conn_id,
                                                                       "syncline.sub": e.sub})
                    if spans:
                        try:
                            await self.perform(effects)
                        finally:
                            for sp in spans:
                                sp.end()
                        return
            elif type(e) is WaitLog:
                await store.doorbell.wait(e.after, self.s.poll_interval_s)
                effects = session.log_grew(e.sub, e.gen, self._ms())
            else:
                too_far, head = await self._count_behind(e)
                effects = session.behind_counted(e.sub, e.gen, too_far, head, self._ms())
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("ws.subscription_failed", sub=e.sub)
            effects = session.read_failed(e.sub, e.gen, err if isinstance(err, SynclineError)
                                          else SynclineError("the subscription failed"))
        await self.perform(effects)

    def _note_delivery(self, events: Any, effects: list) -> None:
        """Count the events going out, and remember each page's newest commit time until its
        frame is written (syncline_delivery_latency_seconds{endpoint="native"})."""
        newest_us = events[-1].time_us
        for eff in effects:
            if type(eff) is Send and eff.msg.get("t") == P.EVENTS:
                self.gw.metrics.events_delivered.labels(ENDPOINT).inc(len(eff.msg.get("events") or ()))
                if len(self._timed) < 256:
                    self._timed[id(eff.msg)] = newest_us

    async def _count_behind(self, e: CountBehind) -> tuple[bool, int]:
        store, tenant = self.gw.store, self.principal.tenant
        head = await self._through_outages(store.head_position)
        if head - e.after <= e.limit:
            return False, head
        counted, cursor = 0, e.after
        while cursor < head:
            page = await self._through_outages(
                lambda: store.read_log(tenant, after=cursor, limit=min(5000, e.limit + 1), filter=e.filter))
            counted += len(page.events)
            if counted > e.limit:
                return True, head
            if page.next_after <= cursor:
                break
            cursor = page.next_after
        return False, head

    async def _through_outages(self, read):
        """Run a store read, waiting out a database that is restarting or unreachable: the
        log is the queue, so a subscription just waits at its cursor (docs/design.md, "The log is the queue")."""
        delay = 0.1
        while True:
            try:
                return await read()
            except StoreUnavailable as e:
                if self.outbox.closed:
                    raise
                if delay == 0.1:  # once per outage
                    log.info("ws.subscription_waiting_for_store", error=e.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # rooms and presence (shared gateway state: the registry, Redis, the hub)

    async def _join(self, room: str) -> None:
        gw, p = self.gw, self.principal
        self._listen(room)
        if gw.presence.join(self.member, room):
            gw.mirror(lambda rp: rp.touch([(p.tenant, room, p.user, self.client, True)]))
            await gw.record_presence(p.tenant, room, p.user, self.client, True)
            gw.hub.publish(room_channel(p.tenant, room),
                           P.message(P.PRESENCE, room=room, user=p.user, event="joined", client=self.client),
                           skip=self._deliver)
        snap = await gw.room_presence(p.tenant, room)
        await self.perform(self.session.room_joined(room, snap["members"], snap["states"]))

    async def _leave(self, room: str) -> None:
        gw, p = self.gw, self.principal
        if room in self.rooms:
            self.rooms.discard(room)
            gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
            gw.presence.set_state(p.tenant, room, p.user, self.conn_id, None, self.gw.clock.monotonic())
            gw.mirror(lambda rp: rp.state(p.tenant, room, p.user, self.conn_id, None))
        if gw.presence.leave(self.member, room):
            gw.mirror(lambda rp: rp.left(p.tenant, room, p.user, self.client))
            await gw.record_presence(p.tenant, room, p.user, self.client, False)
            gw.hub.publish(room_channel(p.tenant, room),
                           P.message(P.PRESENCE, room=room, user=p.user, event="left", client=self.client))

    def _set_presence(self, room: str, state: Any) -> None:
        gw, p = self.gw, self.principal
        gw.presence.set_state(p.tenant, room, p.user, self.conn_id, state, self.gw.clock.monotonic())
        gw.mirror(lambda rp: rp.state(p.tenant, room, p.user, self.conn_id, state))
        gw.hub.publish(room_channel(p.tenant, room),
                       P.message(P.PRESENCE, room=room, user=p.user, conn=self.conn_id, state=state,
                                 ttl_s=self.s.presence_ttl_s))


def _encoded_size(state: Any) -> int:
    """The size of a presence state as msgpack (what it costs to hold and to fan out)."""
    try:
        return len(msgpack.packb(state, default=str))
    except Exception:
        return 1 << 62  # unencodable: refused as too large


def _decode(frame: bytes | str, subprotocol: str) -> dict:
    """``decode_frame`` with the cyclic GC paused: an ops batch unpacks into a few acyclic
    containers per op, and the collections they triggered cost as much as the decoding."""
    with collector_paused():
        return P.decode_frame(frame, subprotocol, allowed=P.CLIENT_TYPES)


@websocket("/v1/ws", summary="Native protocol (docs/protocol.md)")
async def native_ws(socket: WebSocket) -> None:
    gw: Gateway = socket.app.state.gateway
    clear()
    offered = socket.scope.get("subprotocols") or []
    try:
        principal = authenticate(gw, socket)
    except Unauthenticated as e:
        await refuse(gw, socket, ENDPOINT, e.ws_close, e.code)
        return
    wanted = socket.query_params.get("tenant")
    if wanted and wanted != principal.tenant:
        await gw.security_event(principal, "cross_tenant_ws", target=wanted[:80], endpoint=ENDPOINT)
        await refuse(gw, socket, ENDPOINT, WS_FORBIDDEN, "tenant_violation")
        return
    if not principal.can(READ):
        await refuse(gw, socket, ENDPOINT, WS_FORBIDDEN, "forbidden")
        return
    banned = await gw.bans.check((principal.tenant, principal.user), gw.clock.monotonic())
    if banned:
        await refuse(gw, socket, ENDPOINT, WS_RATE_LIMITED, f"rate_limited; retry in {banned:.0f}s")
        return
    if gw.shutting_down:
        await refuse(gw, socket, ENDPOINT, WS_GOING_AWAY, "shutting down")
        return
    client = socket.query_params.get("client") or ""
    if client and not CLIENT_RE.match(client):
        await refuse(gw, socket, ENDPOINT, WS_PROTOCOL, "invalid_client")
        return
    chosen = next((sp for sp in offered if sp in P.SUBPROTOCOLS), None)
    await socket.accept(subprotocols=chosen)
    conn = NativeConnection(gw, socket, principal, chosen or P.SUBPROTOCOL_MSGPACK, client)
    bind_connection(conn.conn_id, principal, ENDPOINT)
    gw.connections[conn.conn_id] = conn
    if gw.revocations.revoked(principal):  # revoked while the handshake was under way
        conn.token_ended("token_revoked")
    gauge = gw.metrics.ws_connections.labels(ENDPOINT)
    gauge.inc()
    log.info("ws.open", subprotocol=conn.subprotocol, client=client)
    try:
        await conn.run()
    except SynclineError as e:
        conn.close(ws_close_code(e), e.code)
    except Exception:
        log.exception("ws.failed")
        conn.close(1011, "internal error")
    finally:
        gauge.dec()
        gw.connections.pop(conn.conn_id, None)
        await conn.cleanup()
        if not conn.outbox.closed:
            conn.close(1000, "")
        await conn.outbox.drain(1.0)
        log.info("ws.close", code=conn.outbox.close_code)
