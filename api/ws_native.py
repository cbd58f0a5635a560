"""The native WebSocket protocol at ``/v1/ws`` (docs/protocol.md; codec in engine/protocol.py).

Subprotocol ``syncline.v1.msgpack`` (default) → msgpack binary frames;
``syncline.v1.json`` → JSON text frames. One frame, one message, ``t`` names it.

A connection is a reader loop (frames in → handlers), a writer task (the outbox),
a heartbeat watchdog, and one task per subscription reading the log from its cursor:
the log is the queue, so resume after a disconnect is "subscribe after my position".
"""
from __future__ import annotations

import asyncio
import gc
import re
import time
from collections import deque
from typing import Any, Callable

from litestar import WebSocket, websocket

from engine import protocol as P
from engine.errors import ProtocolError, StoreUnavailable, SynclineError, ValidationError
from engine.events import Actor, NewEvent, check_stream, dm_stream, is_system_stream, private_to_others
from engine.filters import EventFilter

from .auth import ADMIN, READ, WRITE, Principal
from .errors import (
    WS_FORBIDDEN,
    WS_GOING_AWAY,
    WS_INTERNAL,
    WS_PROTOCOL,
    WS_RATE_LIMITED,
    WS_STALE,
    Forbidden,
    TenantViolation,
    Unauthenticated,
    WebSocketForbidden,
    ws_close_code,
)
from .follower import DM_MESSAGE, ROOM_MESSAGE, dm_msg, room_msg
from .gateway import Gateway
from .hub import room_channel, user_channel
from .logging import clear, log
from .ratelimit import SlidingWindow, Verdict
from .wire import events_wire
from .wsbase import Outbox, authenticate, bind_connection, new_conn_id, refuse

ENDPOINT = "native"
ROOM_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,200}\Z")
CLIENT_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,64}\Z")
SUBS_MAX = 64
ROOMS_MAX = 256


class Subscription:
    def __init__(self, sub_id: str, filter_: EventFilter | None, after: int, system_ok: bool) -> None:
        self.id = sub_id
        self.filter = filter_
        self.cursor = after
        self.system_ok = system_ok
        self.inflight: deque[int] = deque()  # `next` of each batch sent and not yet acked
        self.acked = asyncio.Event()
        self.task: asyncio.Task | None = None


class NativeConnection:
    def __init__(self, gw: Gateway, socket: WebSocket, principal: Principal, subprotocol: str, client: str) -> None:
        self.gw = gw
        self.s = gw.settings
        self.socket = socket
        self.principal = principal
        self.subprotocol = subprotocol
        self.conn_id = new_conn_id()
        self.client = client or self.conn_id
        self.member = (principal.tenant, principal.user, self.client)
        self.outbox = Outbox(socket, ENDPOINT, gw.metrics)
        self.pending: list[dict] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.subs: dict[str, Subscription] = {}
        self.resume: dict[str, int] = {}
        self.rooms: set[str] = set()
        self.limiter = SlidingWindow(self.s.rate_limit_messages, self.s.rate_limit_window_s)
        self.last_seen = time.monotonic()
        self._deliver: Callable[[Any], None] = self._on_hub
        self._tasks: set[asyncio.Task] = set()

    # -- outgoing ------------------------------------------------------------

    def send(self, msg: dict, *, urgent: bool | None = None) -> None:
        """Queue a message. Latency-critical ones go at once (after anything already
        waiting, to keep order); the rest wait up to the batching window."""
        if self.outbox.closed:
            return
        if urgent is None:
            urgent = msg.get("t") in P.LATENCY_CRITICAL
        if urgent or self.s.batch_window_ms <= 0:
            self.flush()
            self.outbox.put(P.encode_frame(msg, self.subprotocol))
            return
        self.pending.append(msg)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.s.batch_window_ms / 1000, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        msgs, self.pending = self.pending, []
        for m in msgs:
            self.outbox.put(P.encode_frame(m, self.subprotocol))

    def close(self, code: int, reason: str) -> None:
        self.flush()
        self.outbox.close(code, reason)

    def bye(self, code: str, reason: str, close_code: int) -> None:
        self.send(P.message(P.BYE, code=code, reason=reason))
        self.close(close_code, code)

    def error(self, ref: Any, err: SynclineError) -> None:
        body: dict[str, Any] = {"t": P.ERROR, "code": err.code, "message": err.message}
        if ref is not None:
            body["ref"] = ref
        if err.details:
            body["details"] = {k: v for k, v in err.details.items() if isinstance(v, (str, int, float, bool, type(None)))}
        self.send(body)

    async def shutdown(self, reason: str) -> None:
        self.bye("shutdown", reason, WS_GOING_AWAY)
        await self.outbox.drain(self.s.shutdown_grace_s)

    def _on_hub(self, msg: Any) -> None:
        if isinstance(msg, dict):
            if msg.get("conn") == self.conn_id and msg.get("t") in (P.MSG, P.PRESENCE):
                return  # no echo of one's own broadcast or presence
            self.send(msg)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- lifecycle -----------------------------------------------------------

    def _attach(self) -> set[str]:
        gw, p = self.gw, self.principal
        rooms = gw.presence.attach(self.member, self.conn_id)
        for room in rooms:  # membership survives reconnection
            if room not in self.rooms:
                self.rooms.add(room)
                gw.hub.subscribe(room_channel(p.tenant, room), self._deliver)
        return rooms

    def _detach(self) -> None:
        gw, p = self.gw, self.principal
        for room in self.rooms:
            gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
            gw.mirror(lambda rp, room=room: rp.state(p.tenant, room, p.user, self.conn_id, None))
            gw.hub.publish(room_channel(p.tenant, room),
                           {"t": P.PRESENCE, "room": room, "user": p.user, "conn": self.conn_id, "state": None})
        self.rooms = set()
        gw.presence.detach(self.member, self.conn_id, time.monotonic())

    async def run(self) -> None:
        gw, p = self.gw, self.principal
        gw.hub.subscribe(user_channel(p.tenant, p.user), self._deliver)
        rooms = self._attach()
        head = await gw.store.head_position()
        self.send(P.message(
            P.WELCOME, session=self.conn_id, tenant=p.tenant, user=p.user, head=head, client=self.client,
            perms=sorted(p.perms), rooms=sorted(rooms), heartbeat_s=self.s.heartbeat_interval_s,
            stale_s=self.s.stale_after_s, batch_window_ms=self.s.batch_window_ms, max_behind=self.s.max_behind,
            rate_limit={"messages": self.s.rate_limit_messages, "window_s": self.s.rate_limit_window_s},
        ))
        self.spawn(self._watchdog())
        received = gw.metrics.ws_messages.labels(ENDPOINT, "in")
        while not self.outbox.closed:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_seen = time.monotonic()
            received.inc()
            verdict = self.limiter.hit(self.last_seen)
            if verdict is not Verdict.OK:
                self.rate_limited(verdict)
                continue
            frame = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            msg: dict | None = None
            try:
                if frame is None:
                    raise P.InvalidMessage("empty frame")
                msg = _decode(frame, self.subprotocol)
                await self.dispatch(msg)
            except TenantViolation as e:
                await gw.security_event(p, "cross_tenant_message", target=str(msg.get("tenant"))[:80],
                                        message_type=str(msg.get("t"))[:40], conn=self.conn_id)
                self.error(msg.get("id"), e)
                self.close(WS_FORBIDDEN, e.code)
                return
            except ProtocolError as e:
                self.error(msg.get("id") if msg else None, e)
                self.close(WS_PROTOCOL, e.code)
                return
            except SynclineError as e:
                self.error(msg.get("id") if msg else None, e)

    def rate_limited(self, verdict: Verdict) -> None:
        m = self.gw.metrics.rate_limited
        retry = round(self.limiter.retry_after(time.monotonic()), 3)
        if verdict is Verdict.WARN:
            m.labels("warn").inc()
            self.send(P.message(P.WARN, code="rate_limited", message="slow down: message dropped",
                                retry_after_s=retry))
            return
        m.labels("disconnect").inc()
        self.gw.bans.ban((self.principal.tenant, self.principal.user), time.monotonic() + self.s.rate_limit_ban_s)
        log.warning("ws.rate_limited_disconnect", ban_s=self.s.rate_limit_ban_s)
        self.send(P.message(P.BYE, code="rate_limited", reason="too many messages",
                            retry_after_s=self.s.rate_limit_ban_s))
        self.close(WS_RATE_LIMITED, "rate_limited")

    async def _watchdog(self) -> None:
        stale = self.s.stale_after_s
        step = max(0.02, min(stale / 4, 5.0))
        while not self.outbox.closed:
            await asyncio.sleep(step)
            if time.monotonic() - self.last_seen > stale:
                log.info("ws.stale", silent_s=round(time.monotonic() - self.last_seen, 3))
                self.bye("stale", f"nothing received for {stale}s", WS_STALE)
                return

    async def cleanup(self) -> None:
        gw, p = self.gw, self.principal
        for t in list(self._tasks):
            t.cancel()
        gw.hub.unsubscribe(user_channel(p.tenant, p.user), self._deliver)
        self._detach()

    # -- incoming ------------------------------------------------------------

    async def dispatch(self, msg: dict) -> None:
        tenant = msg.get("tenant")
        if tenant is not None and tenant != self.principal.tenant:
            raise TenantViolation("messages are scoped to the token's tenant", tenant=self.principal.tenant)
        await HANDLERS[msg["t"]](self, msg)

    def require(self, perm: str) -> None:
        if not self.principal.can(perm):
            raise Forbidden(f"the token lacks the {perm!r} permission", needed=perm)

    async def on_hello(self, msg: dict) -> None:
        client = msg.get("client")
        if client and client != self.client:
            if not CLIENT_RE.match(client):
                raise ValidationError("invalid client id")
            self._detach()
            self.client = client
            self.member = (self.principal.tenant, self.principal.user, client)
            self._attach()
        for sub_id, pos in (msg.get("resume") or {}).items():
            if isinstance(sub_id, str) and isinstance(pos, int) and pos >= 0:
                self.resume[sub_id[:64]] = pos

    async def on_ping(self, msg: dict) -> None:
        self.send(P.message(P.PONG, id=msg.get("id"), time_us=time.time_ns() // 1000))

    # subscriptions

    async def on_sub(self, msg: dict) -> None:
        self.require(READ)
        sub_id = msg["id"][:64]
        old = self.subs.pop(sub_id, None)
        if old and old.task:
            old.task.cancel()
        if len(self.subs) >= SUBS_MAX:
            raise ValidationError(f"at most {SUBS_MAX} subscriptions per connection")
        streams = list(msg.get("streams") or ())
        prefixes = list(msg.get("prefixes") or ())
        for s in streams:
            check_stream(s)
        for r in msg.get("rooms") or ():
            streams.append(f"room/{_check_room(r)}")
        if msg.get("inbox"):
            streams.append(dm_stream(self.principal.user))
        system_ok = self.principal.can(ADMIN)
        if not system_ok and (any(is_system_stream(s) for s in streams) or any(x.startswith("$") for x in prefixes)):
            raise Forbidden("system streams need the 'admin' permission")
        if not system_ok and any(private_to_others(s, self.principal.user) for s in streams):
            raise Forbidden("a user's inbox (dm/<user>) is readable by that user only")
        after = msg.get("after")
        if after is None:
            after = self.resume.get(sub_id, 0)
        f = EventFilter(stream_prefixes=tuple(prefixes), streams=tuple(streams), types=tuple(msg.get("types") or ()))
        sub = Subscription(sub_id, None if f.is_empty else f, after, system_ok)
        self.subs[sub_id] = sub
        sub.task = self.spawn(self._pump(sub))

    async def _too_far_behind(self, sub: Subscription, head: int) -> bool:
        limit = self.s.max_behind
        if head - sub.cursor <= limit:
            return False
        counted, cursor = 0, sub.cursor
        store, tenant = self.gw.store, self.principal.tenant
        while cursor < head:
            page = await self._through_outages(
                lambda: store.read_log(tenant, after=cursor, limit=min(5000, limit + 1), filter=sub.filter))
            counted += len(page.events)
            if counted > limit:
                return True
            if page.next_after <= cursor:
                break
            cursor = page.next_after
        return False

    async def _through_outages(self, read):
        """Run a store read, waiting out a database that is restarting or unreachable: the
        log is the queue, so a subscription just waits at its cursor (DESIGN.md §4)."""
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

    async def _pump(self, sub: Subscription) -> None:
        """Missed events first, in order, then live ones — one loop, since the log is the queue."""
        store, tenant = self.gw.store, self.principal.tenant
        try:
            head = await self._through_outages(store.head_position)
            if await self._too_far_behind(sub, head):
                self.send(P.message(P.REFRESH, sub=sub.id, head=head, reason="too_far_behind",
                                    max_behind=self.s.max_behind))
                self.subs.pop(sub.id, None)
                return
            window = self.s.unacked_batches_max
            while not self.outbox.closed:
                while len(sub.inflight) >= window:
                    sub.acked.clear()
                    await sub.acked.wait()
                page = await self._through_outages(
                    lambda: store.read_log(tenant, after=sub.cursor, limit=self.s.event_batch_max, filter=sub.filter)
                )
                events = page.events
                if not sub.system_ok:
                    if sub.filter is None:
                        events = tuple(e for e in events if not is_system_stream(e.stream))
                    user = self.principal.user
                    if any(private_to_others(e.stream, user) for e in events):
                        events = tuple(e for e in events if not private_to_others(e.stream, user))
                sub.cursor = max(sub.cursor, page.next_after)
                if events:
                    sub.inflight.append(sub.cursor)
                    self.send(P.message(P.EVENTS, sub=sub.id, events=events_wire(events), next=sub.cursor,
                                        head=page.head))
                    continue
                if page.events:
                    continue
                await store.doorbell.wait(sub.cursor, self.s.poll_interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Not an outage (those are waited out above): a subscription that just ended here
            # would leave a client that looks online and never hears of new events. Close the
            # connection instead; the client reconnects and resubscribes from its position.
            log.exception("ws.subscription_failed", sub=sub.id)
            self.subs.pop(sub.id, None)
            self.error(sub.id, e if isinstance(e, SynclineError) else SynclineError("the subscription failed"))
            self.close(WS_INTERNAL, "subscription_failed")

    async def on_ack(self, msg: dict) -> None:
        sub = self.subs.get(msg["sub"])
        if sub is None:
            return
        upto = msg["upto"]
        while sub.inflight and sub.inflight[0] <= upto:
            sub.inflight.popleft()
        sub.acked.set()

    async def on_unsub(self, msg: dict) -> None:
        sub = self.subs.pop(msg["id"], None)
        if sub and sub.task:
            sub.task.cancel()

    async def on_snap(self, msg: dict) -> None:
        from engine.syncdata import chunk_snapshot
        from store.sync import state_snapshot

        self.require(READ)
        streams, prefixes = list(msg.get("streams") or ()), list(msg.get("prefixes") or ())
        if not self.principal.can(ADMIN) and (any(is_system_stream(s) for s in streams)
                                             or any(x.startswith("$") for x in prefixes)):
            raise Forbidden("system streams need the 'admin' permission")
        snap = await state_snapshot(self.gw.store, self.principal.tenant, streams=streams, prefixes=prefixes,
                                    registry=self.gw.records.config.registry)
        for c in chunk_snapshot(snap.position, snap.content, snap.checksum, self.s.snapshot_chunk_bytes):
            self.send(P.message(P.SNAPSHOT, id=msg["id"], index=c.index, total=c.total, checksum=c.checksum,
                                data=c.data, position=snap.position))

    # class C ops; class D commands are refused here

    async def on_ops(self, msg: dict) -> None:
        from .ops import submit_ops

        self.require(WRITE)
        results = await submit_ops(self.gw, self.principal, self.client, msg["ops"])
        self.send(P.message(P.OPACKS, id=msg["id"], results=results))

    async def on_command(self, msg: dict) -> None:
        raise WebSocketForbidden("critical commands are REST only: POST /v1/commands/{type}")

    # rooms, direct messages, presence

    async def on_join(self, msg: dict) -> None:
        self.require(READ)
        room = _check_room(msg["room"])
        p = self.principal
        if room not in self.rooms:
            if len(self.rooms) >= ROOMS_MAX:
                raise ValidationError(f"at most {ROOMS_MAX} rooms per connection")
            self.rooms.add(room)
            self.gw.hub.subscribe(room_channel(p.tenant, room), self._deliver)
        if self.gw.presence.join(self.member, room):
            self.gw.mirror(lambda rp: rp.touch([(p.tenant, room, p.user, self.client, True)]))
            await self.gw.record_presence(p.tenant, room, p.user, self.client, True)
            self.gw.hub.publish(room_channel(p.tenant, room),
                                P.message(P.PRESENCE, room=room, user=p.user, event="joined", client=self.client),
                                skip=self._deliver)
        snap = await self.gw.room_presence(p.tenant, room)
        self.send(P.message(P.JOINED, room=room, members=snap["members"], states=snap["states"]))

    async def on_leave(self, msg: dict) -> None:
        room = _check_room(msg["room"])
        p = self.principal
        if room in self.rooms:
            self.rooms.discard(room)
            self.gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
            self.gw.presence.set_state(p.tenant, room, p.user, self.conn_id, None, time.monotonic())
            self.gw.mirror(lambda rp: rp.state(p.tenant, room, p.user, self.conn_id, None))
        if self.gw.presence.leave(self.member, room):
            self.gw.mirror(lambda rp: rp.left(p.tenant, room, p.user, self.client))
            await self.gw.record_presence(p.tenant, room, p.user, self.client, False)
            self.gw.hub.publish(room_channel(p.tenant, room),
                                P.message(P.PRESENCE, room=room, user=p.user, event="left", client=self.client))
        self.send(P.message(P.LEFT, room=room))

    async def on_say(self, msg: dict) -> None:
        """A room message (class C): stored in ``room/<room>``, acked with its position,
        then delivered live to the room's members on every gateway."""
        self.require(WRITE)
        room = _check_room(msg["room"])
        if room not in self.rooms:
            raise Forbidden("join the room before sending to it", room=room)
        await self._store_message(msg, f"room/{room}", ROOM_MESSAGE, {"room": room}, "room")

    async def on_dm(self, msg: dict) -> None:
        """A direct message (class C): stored in the recipient's inbox ``dm/<user>``, acked
        with its position, delivered live to the recipient's connections on every gateway,
        and on resume (``sub {inbox: true}``) to a recipient who was offline."""
        self.require(WRITE)
        to = msg["to"]
        await self._store_message(msg, check_stream(dm_stream(to)), DM_MESSAGE, {"to": to}, "dm")

    async def _store_message(self, msg: dict, stream: str, type_: str, extra: dict, kind: str) -> None:
        p = self.principal
        ref = msg.get("id")
        data = {**extra, "from": p.user, "data": msg.get("data"), "conn": self.conn_id}
        # A resent message (same id from the same client) is stored once.
        key = f"msg:{p.user}:{self.client}:{ref}" if ref is not None else None
        result = await self.gw.store.append(
            p.tenant, stream, [NewEvent(type_, data=data, actor=Actor(p.user, self.client))], idempotency_key=key)
        pos = result.streams[0].first_position
        self.send(P.message(P.SENT, id=ref, pos=pos, duplicate=result.duplicate), urgent=True)
        if result.duplicate:
            return
        self.gw.metrics.messages_stored.labels(kind).inc()
        live = room_msg(extra["room"], data, pos) if kind == "room" else dm_msg(data, pos)
        self.gw.follower.messages.sent(p.tenant, stream, live)

    async def on_presence(self, msg: dict) -> None:
        room = _check_room(msg["room"])
        if room not in self.rooms:
            raise Forbidden("join the room before setting presence in it", room=room)
        state = msg.get("state")
        p = self.principal
        self.gw.presence.set_state(p.tenant, room, p.user, self.conn_id, state, time.monotonic())
        self.gw.mirror(lambda rp: rp.state(p.tenant, room, p.user, self.conn_id, state))
        self.gw.hub.publish(room_channel(p.tenant, room),
                            P.message(P.PRESENCE, room=room, user=p.user, conn=self.conn_id, state=state,
                                      ttl_s=self.s.presence_ttl_s))


def _decode(frame: bytes | str, subprotocol: str) -> dict:
    """``decode_frame`` with the cyclic GC paused: an ops batch unpacks into a few acyclic
    containers per op, and the collections they triggered cost as much as the decoding."""
    if not gc.isenabled():
        return P.decode_frame(frame, subprotocol, allowed=P.CLIENT_TYPES)
    gc.disable()
    try:
        return P.decode_frame(frame, subprotocol, allowed=P.CLIENT_TYPES)
    finally:
        gc.enable()


def _check_room(room: Any) -> str:
    if not isinstance(room, str) or not ROOM_RE.match(room):
        raise ValidationError("invalid room name", reason="invalid_room")
    return room


HANDLERS: dict[str, Callable[[NativeConnection, dict], Any]] = {
    P.HELLO: NativeConnection.on_hello,
    P.PING: NativeConnection.on_ping,
    P.SUB: NativeConnection.on_sub,
    P.UNSUB: NativeConnection.on_unsub,
    P.ACK: NativeConnection.on_ack,
    P.OPS: NativeConnection.on_ops,
    P.SNAP: NativeConnection.on_snap,
    P.JOIN: NativeConnection.on_join,
    P.LEAVE: NativeConnection.on_leave,
    P.SAY: NativeConnection.on_say,
    P.DM: NativeConnection.on_dm,
    P.PRESENCE: NativeConnection.on_presence,
    P.COMMAND: NativeConnection.on_command,
}


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
    banned = await gw.bans.check((principal.tenant, principal.user), time.monotonic())
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
