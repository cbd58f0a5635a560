"""The native WebSocket protocol at ``/v1/ws`` (specified in docs/protocol.md).

Subprotocol ``syncline.msgpack`` → msgpack binary frames; ``syncline.json`` (or none)
→ JSON text frames. Each frame is one map with a type field ``t``; several queued
messages may travel as one ``{"t": "batch", "m": [...]}`` frame.

The connection is a reader loop (frames in → handlers), a writer task (the outbox),
a heartbeat watchdog, and one task per subscription reading the log from its cursor.
"""
from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import time
from typing import Any, Callable

import msgpack
from litestar import WebSocket, websocket

from engine.errors import ProtocolError, SynclineError, ValidationError
from engine.events import StreamWrite, check_stream, is_system_stream
from engine.filters import EventFilter

from .auth import ADMIN, READ, WRITE, Principal
from .errors import (
    WS_FORBIDDEN,
    WS_GOING_AWAY,
    WS_PROTOCOL,
    WS_RATE_LIMITED,
    WS_STALE,
    CriticalCommandRefused,
    Forbidden,
    TenantViolation,
    Unauthenticated,
    ws_close_code,
)
from .gateway import Gateway
from .hub import room_channel, user_channel
from .logging import clear, log
from .ratelimit import SlidingWindow, Verdict
from .wire import events_wire, from_jsonable, jsonable, new_events
from .wsbase import Outbox, authenticate, bind_connection, new_conn_id, refuse

ENDPOINT = "native"
MSGPACK, JSON = "syncline.msgpack", "syncline.json"
ROOM_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,200}$")
CLIENT_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{0,64}$")
SUBS_MAX = 64
ROOMS_MAX = 256
PROTOCOL_VERSION = 1

# Latency-critical messages bypass the batching window.
URGENT = frozenset({"welcome", "pong", "ack", "error", "warning", "disconnect", "appended", "subscribed",
                    "unsubscribed", "joined", "left_room", "direct", "room", "refresh", "op_acks"})


class Subscription:
    def __init__(self, sub_id: str, filter_: EventFilter | None, after: int, system_ok: bool) -> None:
        self.id = sub_id
        self.filter = filter_
        self.cursor = after
        self.system_ok = system_ok
        self.unacked = 0
        self.acked = asyncio.Event()
        self.task: asyncio.Task | None = None


class NativeConnection:
    def __init__(self, gw: Gateway, socket: WebSocket, principal: Principal, binary: bool, client: str) -> None:
        self.gw = gw
        self.s = gw.settings
        self.socket = socket
        self.principal = principal
        self.binary = binary
        self.client = client
        self.conn_id = new_conn_id()
        self.member = (principal.tenant, principal.user, client or self.conn_id)
        self.outbox = Outbox(socket, ENDPOINT, gw.metrics)
        self.pending: list[dict] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.subs: dict[str, Subscription] = {}
        self.rooms: set[str] = set()
        self.limiter = SlidingWindow(self.s.rate_limit_messages, self.s.rate_limit_window_s)
        self.last_seen = time.monotonic()
        self._deliver: Callable[[Any], None] = self._on_hub
        self._tasks: set[asyncio.Task] = set()

    # -- outgoing ------------------------------------------------------------

    def encode(self, msg: dict) -> bytes | str:
        if self.binary:
            return msgpack.packb(msg, use_bin_type=True)
        return json.dumps(jsonable(msg), separators=(",", ":"), default=str)

    def send(self, msg: dict, *, urgent: bool | None = None) -> None:
        if self.outbox.closed:
            return
        if urgent is None:
            urgent = msg.get("t") in URGENT
        if urgent or self.s.batch_window_ms <= 0:
            self.flush()
            self.outbox.put(self.encode(msg))
            return
        self.pending.append(msg)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.s.batch_window_ms / 1000, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self.pending:
            return
        msgs, self.pending = self.pending, []
        self.outbox.put(self.encode(msgs[0] if len(msgs) == 1 else {"t": "batch", "m": msgs}))

    def close(self, code: int, reason: str) -> None:
        self.flush()
        self.outbox.close(code, reason)

    def error(self, req_id: Any, err: SynclineError) -> None:
        body: dict[str, Any] = {"t": "error", "code": err.code, "message": err.message}
        if req_id is not None:
            body["id"] = req_id
        if err.details:
            body["details"] = jsonable(err.details)
        self.send(body)

    async def shutdown(self, reason: str) -> None:
        self.send({"t": "disconnect", "reason": reason, "retry_after_ms": 1000, "resume": True})
        self.close(WS_GOING_AWAY, reason)
        await self.outbox.drain(self.s.shutdown_grace_s)

    def _on_hub(self, msg: Any) -> None:
        if isinstance(msg, dict):
            if msg.get("t") == "room" and msg.get("from", {}).get("conn") == self.conn_id:
                return  # no echo of one's own broadcast
            self.send(msg)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        gw, p = self.gw, self.principal
        gw.hub.subscribe(user_channel(p.tenant, p.user), self._deliver)
        rooms = gw.presence.attach(self.member, self.conn_id)
        for room in rooms:  # membership survives reconnection
            self.rooms.add(room)
            gw.hub.subscribe(room_channel(p.tenant, room), self._deliver)
        self.send({
            "t": "welcome", "v": PROTOCOL_VERSION, "conn": self.conn_id, "user": p.user, "tenant": p.tenant,
            "client": self.member[2], "perms": sorted(p.perms), "rooms": sorted(rooms),
            "heartbeat_s": self.s.heartbeat_interval_s, "stale_after_s": self.s.stale_after_s,
            "batch_window_ms": self.s.batch_window_ms, "max_behind": self.s.max_behind,
            "rate_limit": {"messages": self.s.rate_limit_messages, "window_s": self.s.rate_limit_window_s},
        })
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
            try:
                msg = self.decode(message)
            except ProtocolError as e:
                self.error(None, e)
                self.close(WS_PROTOCOL, e.code)
                return
            req_id = msg.get("id")
            try:
                await self.dispatch(msg)
            except TenantViolation as e:
                await gw.security_event(p, "cross_tenant_message", target=str(msg.get("tenant"))[:80],
                                        message_type=str(msg.get("t"))[:40], conn=self.conn_id)
                self.error(req_id, e)
                self.close(WS_FORBIDDEN, e.code)
                return
            except ProtocolError as e:
                self.error(req_id, e)
                self.close(WS_PROTOCOL, e.code)
                return
            except SynclineError as e:
                self.error(req_id, e)

    def rate_limited(self, verdict: Verdict) -> None:
        m = self.gw.metrics.rate_limited
        retry = round(self.limiter.retry_after(time.monotonic()), 3)
        if verdict is Verdict.WARN:
            m.labels("warn").inc()
            self.send({"t": "warning", "code": "rate_limited", "message": "slow down: message dropped",
                       "retry_after_s": retry})
            return
        m.labels("disconnect").inc()
        self.gw.bans.ban((self.principal.tenant, self.principal.user), time.monotonic() + self.s.rate_limit_ban_s)
        log.warning("ws.rate_limited_disconnect", ban_s=self.s.rate_limit_ban_s)
        self.send({"t": "disconnect", "reason": "rate_limited", "retry_after_ms": int(self.s.rate_limit_ban_s * 1000),
                   "resume": True})
        self.close(WS_RATE_LIMITED, "rate_limited")

    async def _watchdog(self) -> None:
        stale = self.s.stale_after_s
        step = max(0.02, min(stale / 4, 5.0))
        while not self.outbox.closed:
            await asyncio.sleep(step)
            if time.monotonic() - self.last_seen > stale:
                log.info("ws.stale", silent_s=round(time.monotonic() - self.last_seen, 3))
                self.send({"t": "disconnect", "reason": "stale", "retry_after_ms": 0, "resume": True})
                self.close(WS_STALE, "stale")
                return

    async def cleanup(self) -> None:
        gw, p = self.gw, self.principal
        for t in list(self._tasks):
            t.cancel()
        for sub in self.subs.values():
            if sub.task:
                sub.task.cancel()
        gw.hub.unsubscribe(user_channel(p.tenant, p.user), self._deliver)
        for room in self.rooms:
            gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
        gw.presence.detach(self.member, self.conn_id, time.monotonic())
        for room in self.rooms:
            gw.hub.publish(room_channel(p.tenant, room),
                           {"t": "presence", "room": room, "user": p.user, "conn": self.conn_id, "state": None})

    # -- incoming ------------------------------------------------------------

    def decode(self, message: dict) -> dict:
        raw_bytes, text = message.get("bytes"), message.get("text")
        try:
            if raw_bytes is not None:
                msg = msgpack.unpackb(raw_bytes, raw=False, strict_map_key=True, max_buffer_size=self.s.max_payload)
            elif text is not None:
                if len(text) > self.s.max_payload:
                    raise ProtocolError("frame too large", reason="too_large")
                msg = from_jsonable(json.loads(text))
            else:
                raise ProtocolError("empty frame")
        except ProtocolError:
            raise
        except Exception as e:
            raise ProtocolError(f"undecodable frame: {type(e).__name__}", reason="undecodable") from e
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise ProtocolError("a frame must be a map with a string 't'", reason="no_type")
        return msg

    async def dispatch(self, msg: dict) -> None:
        tenant = msg.get("tenant")
        if tenant is not None and tenant != self.principal.tenant:
            raise TenantViolation("messages are scoped to the token's tenant", tenant=self.principal.tenant)
        handler = HANDLERS.get(msg["t"])
        if handler is None:
            raise ValidationError(f"unknown message type {str(msg['t'])[:40]!r}", reason="unknown_type")
        await handler(self, msg)

    def require(self, perm: str) -> None:
        if not self.principal.can(perm):
            raise Forbidden(f"the token lacks the {perm!r} permission", needed=perm)

    async def on_ping(self, msg: dict) -> None:
        self.send({"t": "pong", "n": msg.get("n"), "server_time_ms": int(time.time() * 1000)})

    async def on_pong(self, msg: dict) -> None:
        return None

    # subscriptions

    async def on_subscribe(self, msg: dict) -> None:
        self.require(READ)
        sub_id = str(msg.get("sub") or msg.get("id") or "default")[:64]
        if sub_id in self.subs:
            raise ValidationError(f"subscription {sub_id!r} exists; unsubscribe first")
        if len(self.subs) >= SUBS_MAX:
            raise ValidationError(f"at most {SUBS_MAX} subscriptions per connection")
        streams = _str_list(msg.get("streams"), "streams")
        prefixes = _str_list(msg.get("prefixes"), "prefixes")
        types = _str_list(msg.get("types"), "types")
        rooms = _str_list(msg.get("rooms"), "rooms")
        for s in streams:
            check_stream(s)
        for r in rooms:
            _check_room(r)
            streams.append(f"room/{r}")
        system_ok = self.principal.can(ADMIN)
        if not system_ok and (any(is_system_stream(s) for s in streams) or any(x.startswith("$") for x in prefixes)):
            raise Forbidden("system streams need the 'admin' permission")
        after = msg.get("after", 0)
        if not isinstance(after, int) or after < 0:
            raise ValidationError("'after' must be a non-negative integer position")
        f = EventFilter(stream_prefixes=tuple(prefixes), streams=tuple(streams), types=tuple(types))
        sub = Subscription(sub_id, None if f.is_empty else f, after, system_ok)
        self.subs[sub_id] = sub
        head = await self.gw.store.head_position()
        self.send({"t": "subscribed", "id": msg.get("id"), "sub": sub_id, "after": after, "head": head})
        sub.task = self.spawn(self._pump(sub, head))

    async def _too_far_behind(self, sub: Subscription, head: int) -> bool:
        limit = self.s.max_behind
        if head - sub.cursor <= limit:
            return False
        counted, cursor = 0, sub.cursor
        store = self.gw.store
        while cursor < head:
            page = await store.read_log(self.principal.tenant, after=cursor, limit=min(5000, limit + 1),
                                        filter=sub.filter)
            counted += len(page.events)
            if counted > limit:
                return True
            if page.next_after <= cursor:
                break
            cursor = page.next_after
        return False

    async def _pump(self, sub: Subscription, head: int) -> None:
        """Missed events first, in order, then live ones: the same loop, since the log is the queue."""
        store, tenant = self.gw.store, self.principal.tenant
        try:
            if await self._too_far_behind(sub, head):
                self.send({"t": "refresh", "sub": sub.id, "reason": "too_far_behind", "head": head,
                           "max_behind": self.s.max_behind,
                           "hint": "load a snapshot (GET /v1/docs/{doc}/snapshot) or read state, then subscribe after its position"})
                self.subs.pop(sub.id, None)
                return
            window = self.s.unacked_batches_max
            while not self.outbox.closed:
                while sub.unacked >= window:
                    sub.acked.clear()
                    await sub.acked.wait()
                page = await store.read_log(tenant, after=sub.cursor, limit=self.s.event_batch_max, filter=sub.filter)
                events = page.events
                if not sub.system_ok and sub.filter is None:
                    events = tuple(e for e in events if not is_system_stream(e.stream))
                sub.cursor = max(sub.cursor, page.next_after)
                if events:
                    sub.unacked += 1
                    self.send({"t": "events", "sub": sub.id, "events": events_wire(events),
                               "last": events[-1].position, "cursor": sub.cursor})
                    continue
                if page.events:
                    continue
                await store.doorbell.wait(sub.cursor, self.s.poll_interval_s)
        except asyncio.CancelledError:
            raise
        except SynclineError as e:
            self.error(None, e)
            self.subs.pop(sub.id, None)
        except Exception:
            log.exception("ws.subscription_failed", sub=sub.id)
            self.subs.pop(sub.id, None)

    async def on_ack(self, msg: dict) -> None:
        sub = self.subs.get(str(msg.get("sub") or "default"))
        if sub is None:
            return
        sub.unacked = max(0, sub.unacked - max(1, int(msg.get("batches", 1) or 1)))
        sub.acked.set()

    async def on_unsubscribe(self, msg: dict) -> None:
        sub = self.subs.pop(str(msg.get("sub") or "default"), None)
        if sub and sub.task:
            sub.task.cancel()
        self.send({"t": "unsubscribed", "id": msg.get("id"), "sub": sub.id if sub else None})

    # appends (class C); class D types are refused here

    async def on_append(self, msg: dict) -> None:
        self.require(WRITE)
        stream = check_stream(msg.get("stream"))
        if is_system_stream(stream):
            raise Forbidden("system streams are written by the server only")
        items = msg.get("events")
        for it in items if isinstance(items, list) else ():
            t = it.get("type") if isinstance(it, dict) else None
            if isinstance(t, str) and any(fnmatch.fnmatchcase(t, pat) for pat in self.s.critical_types):
                raise CriticalCommandRefused(f"{t!r} is a critical command type: use POST /v1/commands/{t}", type=t)
        events = new_events(items, self.principal, client=self.member[2])
        expected = msg.get("expected_version")
        if expected is not None and (not isinstance(expected, int) or expected < 0):
            raise ValidationError("expected_version must be a non-negative integer")
        idem = msg.get("idem")
        if idem is not None and (not isinstance(idem, str) or not 0 < len(idem) <= 200):
            raise ValidationError("idem must be a string of 1-200 characters")
        result = await self.gw.store.append_many(
            self.principal.tenant, [StreamWrite(stream, tuple(events), expected)], idempotency_key=idem
        )
        self.gw.metrics.events_appended.labels("ws").inc(len(events))
        s = result.streams[0]
        self.send({"t": "appended", "id": msg.get("id"), "stream": stream, "first_position": s.first_position,
                   "last_position": s.last_position, "last_version": s.last_version, "duplicate": result.duplicate})

    async def on_command(self, msg: dict) -> None:
        raise CriticalCommandRefused("critical commands are refused over WebSocket: POST /v1/commands/{type}")

    async def on_ops(self, msg: dict) -> None:
        from . import ops  # the records reconcile API (engine/records); see api/ops.py

        self.require(WRITE)
        acks = await ops.submit_ops(self.gw, self.principal, self.member[2], msg.get("ops"))
        self.send({"t": "op_acks", "id": msg.get("id"), "acks": acks})

    # rooms, direct messages, presence

    async def on_join(self, msg: dict) -> None:
        self.require(READ)
        room = _check_room(msg.get("room"))
        p = self.principal
        if room not in self.rooms:
            if len(self.rooms) >= ROOMS_MAX:
                raise ValidationError(f"at most {ROOMS_MAX} rooms per connection")
            self.rooms.add(room)
            self.gw.hub.subscribe(room_channel(p.tenant, room), self._deliver)
        first = self.gw.presence.join(self.member, room)
        if first:
            await self.gw.record_presence(p.tenant, room, p.user, self.member[2], True)
            self.gw.hub.publish(room_channel(p.tenant, room),
                                {"t": "joined_room", "room": room, "user": p.user, "client": self.member[2]},
                                skip=self._deliver)
        snap = self.gw.presence.snapshot(p.tenant, room, time.monotonic())
        self.send({"t": "joined", "id": msg.get("id"), "room": room, "members": snap["members"],
                   "states": snap["states"]})

    async def on_leave(self, msg: dict) -> None:
        room = _check_room(msg.get("room"))
        p = self.principal
        if room in self.rooms:
            self.rooms.discard(room)
            self.gw.hub.unsubscribe(room_channel(p.tenant, room), self._deliver)
        if self.gw.presence.leave(self.member, room):
            await self.gw.record_presence(p.tenant, room, p.user, self.member[2], False)
            self.gw.hub.publish(room_channel(p.tenant, room),
                                {"t": "left", "room": room, "user": p.user, "client": self.member[2]})
        self.send({"t": "left_room", "id": msg.get("id"), "room": room})

    async def on_broadcast(self, msg: dict) -> None:
        self.require(WRITE)
        room = _check_room(msg.get("room"))
        if room not in self.rooms:
            raise Forbidden("join the room before broadcasting to it", room=room)
        p = self.principal
        self.gw.hub.publish(room_channel(p.tenant, room), {
            "t": "room", "room": room, "from": {"user": p.user, "conn": self.conn_id}, "data": msg.get("data")})
        if msg.get("id") is not None:
            self.send({"t": "ack", "id": msg.get("id")})

    async def on_direct(self, msg: dict) -> None:
        self.require(WRITE)
        to = msg.get("to")
        if not isinstance(to, str) or not to or len(to) > 200:
            raise ValidationError("'to' must be a user id")
        p = self.principal
        self.gw.hub.publish(user_channel(p.tenant, to), {
            "t": "direct", "from": {"user": p.user, "conn": self.conn_id}, "data": msg.get("data")})
        if msg.get("id") is not None:
            self.send({"t": "ack", "id": msg.get("id")})

    async def on_presence(self, msg: dict) -> None:
        room = _check_room(msg.get("room"))
        if room not in self.rooms:
            raise Forbidden("join the room before setting presence in it", room=room)
        state = msg.get("state")
        if state is not None and not isinstance(state, dict):
            raise ValidationError("presence state must be a map (typing, cursor, ...) or null")
        p = self.principal
        now = time.monotonic()
        self.gw.presence.set_state(p.tenant, room, p.user, self.conn_id, state, now)
        self.gw.hub.publish(room_channel(p.tenant, room), {
            "t": "presence", "room": room, "user": p.user, "conn": self.conn_id, "state": state,
            "ttl_s": self.s.presence_ttl_s}, skip=self._deliver)


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 255 for v in value) or len(value) > 100:
        raise ValidationError(f"'{name}' must be a list of at most 100 strings")
    return list(value)


def _check_room(room: Any) -> str:
    if not isinstance(room, str) or not ROOM_RE.match(room):
        raise ValidationError("invalid room name", reason="invalid_room")
    return room


HANDLERS: dict[str, Callable[[NativeConnection, dict], Any]] = {
    "ping": NativeConnection.on_ping,
    "pong": NativeConnection.on_pong,
    "subscribe": NativeConnection.on_subscribe,
    "unsubscribe": NativeConnection.on_unsubscribe,
    "ack": NativeConnection.on_ack,
    "append": NativeConnection.on_append,
    "command": NativeConnection.on_command,
    "ops": NativeConnection.on_ops,
    "join": NativeConnection.on_join,
    "leave": NativeConnection.on_leave,
    "broadcast": NativeConnection.on_broadcast,
    "direct": NativeConnection.on_direct,
    "presence": NativeConnection.on_presence,
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
    banned = gw.bans.banned_for((principal.tenant, principal.user), time.monotonic())
    if banned:
        await refuse(gw, socket, ENDPOINT, WS_RATE_LIMITED, f"rate_limited; retry in {banned:.0f}s")
        return
    if gw.shutting_down:
        await refuse(gw, socket, ENDPOINT, WS_GOING_AWAY, "shutting down")
        return
    client = socket.query_params.get("client") or ""
    if not CLIENT_RE.match(client):
        await refuse(gw, socket, ENDPOINT, WS_PROTOCOL, "invalid_client")
        return
    binary = MSGPACK in offered
    chosen = MSGPACK if binary else (JSON if JSON in offered else None)
    await socket.accept(subprotocols=chosen)
    conn = NativeConnection(gw, socket, principal, binary, client)
    bind_connection(conn.conn_id, principal, ENDPOINT)
    gw.connections[conn.conn_id] = conn
    gauge = gw.metrics.ws_connections.labels(ENDPOINT)
    gauge.inc()
    log.info("ws.open", format="msgpack" if binary else "json", client=client)
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
