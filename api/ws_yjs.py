"""The Yjs endpoint: ``/v1/yjs/{doc}?token=JWT`` speaks the standard y-websocket protocol.

One message per binary frame (engine.yprotocol). On connect the server sends its
sync step 1 and the current awareness states. Every update from a writer is appended
to the log as a ``crdt.update`` event on ``doc/{doc}`` *before* it is applied and
relayed; a client without ``write`` gets ``permission-denied`` instead. Rooms follow
the log (:class:`DocRooms`): updates written anywhere else reach them through the
gateway's log follower, with Redis only as a faster relay. Awareness is
relayed, owned by the connection (so by the token's user) and removed on close.
Documents are keyed by (tenant, doc): the same name in two tenants is two documents.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from litestar import WebSocket, websocket

from syncline.engine.access import can_write, read_refusal
from syncline.engine.awareness import AwarenessRegistry
from syncline.engine.doccache import DocumentCache
from syncline.engine.docfollow import FollowedDocument
from syncline.engine.documents import CRDT_UPDATE, Document, PendingLimits, SnapshotPolicy
from syncline.engine.errors import ProtocolError, SynclineError
from syncline.engine.events import Actor, NewEvent
from syncline.engine.yprotocol import (
    AwarenessMessage,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessageType,
    decode_message,
    encode_awareness,
    encode_permission_denied,
    encode_sync_step2,
    encode_sync_update,
    sync_step1,
)
from syncline.engine.yupdates import EMPTY_UPDATE, InvalidUpdate
from syncline.store import history

from .auth import READ, Principal
from .errors import (
    WS_FORBIDDEN,
    WS_GOING_AWAY,
    WS_PROTOCOL,
    WS_RATE_LIMITED,
    WS_UNAUTHENTICATED,
    WS_UNAVAILABLE,
    Unauthenticated,
    ws_close_code,
)
from .hub import doc_channel
from .limits import YjsRate
from .logging import clear, log
from .quota import QuotaExceeded
from .tracing import detach_trace, trace_active, traced
from .wsbase import Outbox, authenticate, bind_connection, new_conn_id, query_params, refuse

if TYPE_CHECKING:
    from .gateway import Gateway

DOC_RE = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,200}\Z")
SNAPSHOT_KIND = history.DOC_SNAPSHOT_KIND
ENDPOINT = "yjs"


def clock_ms(gw: Gateway) -> int:
    return int(gw.clock.monotonic() * 1000)


class DocRoom:
    def __init__(self, tenant: str, doc: str, document: Document, *, follower_at: int = 0) -> None:
        self.tenant = tenant
        self.doc = doc
        self.stream = f"doc/{doc}"
        self.document = document
        self.awareness = AwarenessRegistry()
        self.conns: dict[str, YjsConnection] = {}
        self.inflight = 0  # updates accepted and not yet applied; no snapshot while > 0
        self.snapshotting = False
        self.remote_cb: Any = None
        # Updates waiting for the next append (update, writer connection), and the task
        # appending them: see DocRooms.submit.
        self.pending: list[tuple[bytes, YjsConnection]] = []
        self.appender: asyncio.Task | None = None
        self.appended = asyncio.Event()
        # The document and which log positions of its stream it holds (engine.docfollow).
        self.followed = FollowedDocument(document, follower_at=follower_at)

    def broadcast(self, frame: bytes, skip: str | None = None, commit_us: int | None = None) -> int:
        """Queue ``frame`` for every connection but ``skip``; returns how many. With
        ``commit_us`` the first reader's frame is timed when written (one sample per
        update of ``syncline_delivery_latency_seconds{endpoint="yjs"}``, not one per reader)."""
        n = 0
        for cid, c in self.conns.items():
            if cid != skip:
                if commit_us is not None:
                    c.outbox.put(frame, commit_us)
                    commit_us = None
                else:
                    c.outbox.put(frame)
                n += 1
        return n


def _batch_trace(batch: list) -> Any:
    """The trace of the first writer in ``batch`` whose WebSocket upgrade carried a
    ``traceparent`` header (api/app.py leaves it in the scope), or None."""
    for _, conn in batch:
        state = conn.socket.scope.get("state")
        if state and "trace_parent" in state:
            return state["trace_parent"]
    return None


async def load_document(store: Any, tenant: str, stream: str) -> Document:
    """Latest verified snapshot plus the stream's updates after it (store.history)."""
    return await history.load_document(store, tenant, stream)


# Updates a room holds back before its writers wait for the append in flight: the bound
# on what one room's writers can queue in memory ahead of the store.
PENDING_UPDATES_MAX = 2048
# Log events a room being loaded keeps for after its load (beyond it, the room is
# loaded again: the events are in the log).
EARLY_MAX = 10_000


class DocRooms:
    """Loaded documents, kept in step with the log.

    A room's document is loaded from the log (snapshot + tail) and then follows it: the
    gateway's :class:`~api.follower.LogFollower` brings every ``crdt.update`` of the
    room's stream in position order, whoever wrote it (another gateway, REST, the bus,
    an offline client's queue), and the room applies those it has not applied yet. Its
    own writers' updates are applied and relayed as soon as their append returns (the
    fast path), and Redis may bring other gateways' updates early; the room's
    :class:`~engine.logfollow.DeliveryGate` makes sure each position is applied once and
    knows the highest position below which everything is applied. Snapshots are taken
    only at that position, when nothing beyond it is applied: a snapshot never claims an
    update it lacks, nor holds one past its position.

    A document stays loaded while it has connections (pinned in the
    :class:`~engine.doccache.DocumentCache`) and for ``yjs_doc_idle_s`` after the last one
    leaves; idle documents, and the least recently used ones past
    ``yjs_doc_memory_budget_bytes``, are unloaded after a snapshot of their tail."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.rooms: dict[tuple[str, str], DocRoom] = {}
        self._loading: dict[tuple[str, str], asyncio.Future] = {}
        # Log events (and passed positions) for rooms being loaded, applied after the load.
        self._early: dict[tuple[str, str], list[Any]] = {}
        self.policy = SnapshotPolicy()
        self.limits = PendingLimits(max_parts=gw.settings.yjs_pending_max, max_bytes=gw.settings.yjs_pending_max_bytes)
        self._tasks: set[asyncio.Task] = set()
        s = gw.settings
        self.cache: DocumentCache[tuple[str, str]] = DocumentCache(
            idle_after_ms=int(s.yjs_doc_idle_s * 1000), memory_budget_bytes=s.yjs_doc_memory_budget_bytes)
        self._sweeper: asyncio.Task | None = None

    def _sweep_interval_s(self) -> float:
        return max(0.05, min(self.gw.settings.yjs_doc_idle_s / 4, 10.0))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s())
            try:
                self.unload(self.cache.sweep(now_ms=clock_ms(self.gw)))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("yjs.sweep_failed")

    async def open(self, tenant: str, doc: str) -> DocRoom:
        """The room, loaded if needed, pinned in the cache: the caller must :meth:`release` it."""
        key = (tenant, doc)
        room = self.rooms.get(key)
        if room is None:
            room = await self._load(key)
        if key not in self.cache:
            self.cache.put(key, room.document, now_ms=clock_ms(self.gw))
        self.cache.pin(key)
        self.unload(self.cache.touch(key, now_ms=clock_ms(self.gw)))
        return room

    async def _load(self, key: tuple[str, str]) -> DocRoom:
        fut = self._loading.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        tenant, doc = key
        fut = self._loading[key] = asyncio.get_running_loop().create_future()
        # Registered with the follower *before* reading: every event committed from now
        # on is either in what the load reads or delivered to ``_early`` (or both).
        early = self._early[key] = []
        started_at = self.gw.follower.cursor
        try:
            document = await load_document(self.gw.store, tenant, f"doc/{doc}")
            document.limits = self.limits  # (what clients send is checked against them: Document.admit)
            # The load holds every update of the stream up to ``document.position``.
            room = DocRoom(tenant, doc, document, follower_at=started_at)
            self.rooms[key] = room
            del self._early[key]
            for item in early:
                if isinstance(item, int):
                    room.followed.passed(item)
                else:
                    self._apply_from_log(room, item)
            room.remote_cb = lambda msg, r=room: self._remote(r, msg)
            self.gw.hub.subscribe(doc_channel(tenant, doc), room.remote_cb)
            evicted = self.cache.put(key, document, now_ms=clock_ms(self.gw))
            self.gw.metrics.docs_loaded.set(len(self.rooms))
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep(), name="yjs-doc-sweeper")
            fut.set_result(room)
            self.unload(evicted)
            return room
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._loading.pop(key, None)
            self._early.pop(key, None)

    # -- following the log -----------------------------------------------------

    def from_log(self, event: Any) -> None:
        """The follower read a ``crdt.update`` (in position order)."""
        stream = event.stream
        if not stream.startswith("doc/"):
            return
        self.gw.quota.seen(event)
        key = (event.tenant, stream[4:])
        room = self.rooms.get(key)
        if room is not None:
            self._apply_from_log(room, event)
            return
        early = self._early.get(key)
        if early is not None and len(early) < EARLY_MAX:
            early.append(event)

    def passed(self, upto: int) -> None:
        """The follower read every followed event up to ``upto``."""
        for room in self.rooms.values():
            room.followed.passed(upto)
        for early in self._early.values():
            if len(early) < EARLY_MAX:
                early.append(upto)

    def _apply_from_log(self, room: DocRoom, event: Any) -> None:
        try:
            if not room.followed.from_log(event):
                return  # applied already: this gateway wrote it, Redis brought it, or the load had it
        except SynclineError as e:
            log.warning("yjs.log_update_unusable", stream=room.stream, position=event.position, code=e.code)
            return
        delivered = room.broadcast(encode_sync_update(event.data), commit_us=event.time_us)
        if delivered:
            self.gw.metrics.events_delivered.labels(ENDPOINT).inc(delivered)
        self.gw.metrics.yjs_updates_from_log.inc()
        if room.inflight == 0 and self.policy.due(room.document):
            self.snapshot_soon(room)

    def _remote(self, room: DocRoom, msg: Any) -> None:
        """An update or awareness change relayed by another gateway process (the fast path;
        the follower brings the same update from the log in any case)."""
        if not isinstance(msg, dict) or msg.get("node") == self.gw.hub.node:
            return
        if msg.get("kind") == "update":
            pos, update = msg.get("pos"), msg.get("update")
            if not isinstance(pos, int) or not isinstance(update, bytes):
                return
            try:
                if not room.followed.relayed(update, pos):
                    return
            except SynclineError:
                return  # the follower brings it from the log and reports it there
            room.broadcast(encode_sync_update(update))
        elif msg.get("kind") == "awareness":
            room.broadcast(encode_awareness(msg["update"]))

    def release(self, room: DocRoom) -> None:
        """A connection left: unpin; the document stays loaded until it is idle long
        enough or the memory budget needs the room."""
        key = (room.tenant, room.doc)
        if self.rooms.get(key) is not room:
            return
        self.cache.unpin(key)
        self.unload(self.cache.touch(key, now_ms=clock_ms(self.gw)))

    def unload(self, dropped: list[tuple[tuple[str, str], Document]]) -> None:
        """Forget rooms the cache dropped, snapshotting the ones with a tail first."""
        for key, document in dropped:
            room = self.rooms.get(key)
            if room is None or room.document is not document:
                continue
            if room.conns or room.inflight or room.pending:
                # Still busy (the cache only sees pins): keep it, it is swept again later.
                self.cache.put(key, document, now_ms=clock_ms(self.gw))
                continue
            del self.rooms[key]
            self.gw.hub.unsubscribe(doc_channel(room.tenant, room.doc), room.remote_cb)
            self.gw.metrics.docs_loaded.set(len(self.rooms))
            if document.tail_events:
                self.snapshot_soon(room)

    def snapshot_soon(self, room: DocRoom) -> None:
        """Snapshot the document at the room's log position, if it holds exactly the
        stream's updates up to there (else later: the follower is about to catch up)."""
        if room.snapshotting or room.inflight or not room.followed.exact:
            return
        # Taken now, not in the task: later updates must not slip into it.
        snap = room.followed.snapshot()
        if snap is None:
            return
        room.snapshotting = True

        async def save() -> None:
            try:
                await self.gw.store.save_snapshot(room.tenant, room.stream, SNAPSHOT_KIND, snap.position,
                                                  snap.state, snap.checksum)
            except Exception:
                log.exception("yjs.snapshot_failed", stream=room.stream)
            finally:
                room.snapshotting = False

        self._spawn(save())

    def _spawn(self, coro: Any) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # -- the write path ------------------------------------------------------

    async def submit(self, room: DocRoom, update: bytes, conn: "YjsConnection") -> None:
        """Queue a writer's update for the room's next append. Returns at once unless
        PENDING_UPDATES_MAX updates already wait (then after the append in flight), so a
        writer's connection keeps reading while its earlier updates are being committed.

        Rule kept: an update is appended to the log before it is applied or relayed. The
        updates that arrive while one append is in flight go together in the next one
        (one ``store.append`` call, one commit: the store's group commit), and are then
        applied and relayed in arrival order, so readers see them in the writers' order.
        """
        room.inflight += 1
        room.pending.append((update, conn))
        if room.appender is None:
            room.appender = self._spawn(self._append_loop(room))
        while len(room.pending) >= PENDING_UPDATES_MAX and room.appender is not None:
            room.appended.clear()
            await room.appended.wait()

    async def _append_loop(self, room: DocRoom) -> None:
        gw = self.gw
        if trace_active():
            detach_trace()  # (the task inherits the first writer's context; each batch has its own trace)
        try:
            while room.pending:
                batch, room.pending = room.pending, []
                events = [NewEvent(CRDT_UPDATE, data=u, actor=Actor(c.principal.user, c.conn_id)) for u, c in batch]
                # A span only when a writer of the batch sent a traceparent on its upgrade
                # (or an SDK provider samples): the hot path makes none.
                parent = _batch_trace(batch)
                try:
                    with traced(parent, "yjs.append", {"syncline.doc": room.doc, "syncline.updates": len(batch)}):
                        result = await gw.store.append(room.tenant, room.stream, events)
                except Exception as e:
                    room.inflight -= len(batch)
                    self._append_failed(room, batch, e)
                    continue
                commit_us = time.time_ns() // 1000
                s = result.streams[0]
                position, version = s.first_position, s.first_version
                document, followed = room.document, room.followed
                fanout = traced(parent, "yjs.fanout", {"syncline.doc": room.doc, "syncline.readers": len(room.conns)})
                delivered = 0
                with fanout:
                    for update, conn in batch:
                        # (The follower may have read it from the log first: then it is applied.)
                        if followed.local(update, position, version):
                            # One frame per update, shared by every reader's outbox.
                            delivered += room.broadcast(encode_sync_update(update), skip=conn.conn_id,
                                                        commit_us=commit_us)
                            conn._relay({"kind": "update", "update": update, "pos": position})
                        position += 1
                        version += 1
                if delivered:
                    gw.metrics.events_delivered.labels(ENDPOINT).inc(delivered)
                room.inflight -= len(batch)
                gw.metrics.yjs_updates.inc(len(batch))
                gw.metrics.events_appended.labels("yjs").inc(len(batch))
                room.appended.set()
                if room.inflight == 0 and self.policy.due(document):
                    self.snapshot_soon(room)
        finally:
            room.appender = None
            room.appended.set()
        if room.conns or room.pending:
            return
        self.unload(self.cache.touch((room.tenant, room.doc), now_ms=clock_ms(self.gw)))

    def _append_failed(self, room: DocRoom, batch: list, e: Exception) -> None:
        """Nothing of the batch was applied or relayed; its writers are closed (they
        resend what they lack on reconnect, in sync step 2)."""
        if isinstance(e, SynclineError):
            code, reason = ws_close_code(e) if e.http_status != 503 else WS_UNAVAILABLE, e.code
            log.info("yjs.append_failed", code=e.code, error=e.message, updates=len(batch))
        else:
            code, reason = 1011, "internal error"
            log.error("yjs.append_failed", error=repr(e), updates=len(batch))
        for conn in {id(c): c for _, c in batch}.values():
            conn.outbox.close(code, reason)

    # -- reading ---------------------------------------------------------------

    async def document_for_read(self, tenant: str, doc: str) -> Document:
        room = self.rooms.get((tenant, doc))
        if room is not None:
            return room.document
        return await load_document(self.gw.store, tenant, f"doc/{doc}")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        appenders = [r.appender for r in self.rooms.values() if r.appender is not None]
        if appenders:
            await asyncio.wait(appenders, timeout=5)
        for room in list(self.rooms.values()):
            if room.document.tail_events and room.inflight == 0 and not room.snapshotting:
                snap = room.followed.snapshot()
                if snap is None:
                    continue
                try:
                    await self.gw.store.save_snapshot(room.tenant, room.stream, SNAPSHOT_KIND, snap.position,
                                                      snap.state, snap.checksum)
                except Exception:
                    log.exception("yjs.snapshot_failed", stream=room.stream)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


class YjsConnection:
    # One per open socket, kept for its whole life: slots, not a __dict__.
    __slots__ = ("gw", "socket", "principal", "room", "conn_id", "outbox", "writable", "rate")

    def __init__(self, gw: Gateway, socket: WebSocket, principal: Principal, room: DocRoom) -> None:
        self.gw = gw
        self.socket = socket
        self.principal = principal
        self.room = room
        self.conn_id = new_conn_id()
        self.outbox = Outbox(socket, ENDPOINT, gw.metrics)
        # (engine/access.py: the write permission, and with scopes a write: scope on doc/<doc>)
        self.writable = can_write(principal, room.stream)
        self.rate: YjsRate | None = None  # (made on the first message)

    async def shutdown(self, reason: str) -> None:
        self.outbox.close(WS_GOING_AWAY, reason)
        await self.outbox.drain(self.gw.settings.shutdown_grace_s)

    def token_ended(self, code: str) -> None:
        """The token expired or was revoked: close 4401 with the reason (y-websocket
        clients reconnect, with a new token in ``params``)."""
        if code == "token_expired" and not self.outbox.closed:
            self.gw.metrics.token_expired_sessions.labels(ENDPOINT).inc()
        self.outbox.close(WS_UNAUTHENTICATED, code)

    async def run(self) -> None:
        room, gw = self.room, self.gw
        received = gw.metrics.ws_messages.labels(ENDPOINT, "in")
        self.outbox.put(sync_step1(room.document))
        if room.awareness.states:
            self.outbox.put(encode_awareness(room.awareness.encode()))
        while True:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes")
            if frame is None:
                self.outbox.close(WS_PROTOCOL, "y-websocket frames are binary")
                return
            received.inc()
            if not self._within_limits(frame):
                return
            try:
                msg = decode_message(frame)
            except UnknownMessageType:
                continue  # y-websocket peers ignore message types they do not speak
            except ProtocolError as e:
                log.info("yjs.protocol_error", code=e.code, error=e.message)
                self.outbox.close(WS_PROTOCOL, e.code)
                return
            limit = gw.settings.presence_state_max_bytes
            if limit and isinstance(msg, AwarenessMessage) and len(frame) > limit:
                gw.metrics.limits_hit.labels("presence_state").inc()
                log.info("yjs.awareness_too_large", size=len(frame), doc=room.doc)
                self.outbox.close(WS_PROTOCOL, "presence_too_large")
                return
            await self.handle(msg)
            if self.outbox.closed:
                return

    def _within_limits(self, frame: bytes) -> bool:
        """The connection's message and byte rates (api/limits.py YjsRate); past either:
        close 4429, and the user is refused for ``rate_limit_ban_s`` (as on /v1/ws)."""
        gw = self.gw
        now = gw.clock.monotonic()
        if self.rate is None:
            self.rate = YjsRate(gw.settings, now)
        if self.rate.allow(now, len(frame)):
            return True
        gw.metrics.limits_hit.labels("yjs_rate").inc()
        gw.metrics.rate_limited.labels("disconnect").inc()
        p = self.principal
        gw.bans.ban((p.tenant, p.user), now + gw.settings.rate_limit_ban_s)
        log.warning("yjs.rate_limited_disconnect", doc=self.room.doc, ban_s=gw.settings.rate_limit_ban_s)
        self.outbox.close(WS_RATE_LIMITED, "rate_limited")
        return False

    async def handle(self, msg: Any) -> None:
        room = self.room
        if isinstance(msg, SyncStep1):
            self.outbox.put(encode_sync_step2(room.document.diff(msg.state_vector)))
        elif isinstance(msg, (SyncStep2, SyncUpdate)):
            update = msg.update
            if update == EMPTY_UPDATE:
                return
            try:
                # Nothing new (a reader's sync step 2 carries its whole delete set): not
                # appended. An update that can never fit, or would overflow what the
                # document holds waiting, is refused before it reaches the log.
                if not room.document.admit(update):
                    return
            except InvalidUpdate as e:
                self.gw.metrics.yjs_refused.labels(e.code).inc()
                log.info("yjs.update_refused", code=e.code, error=e.message, doc=room.doc)
                self.outbox.close(WS_PROTOCOL, e.code)
                return
            if not self.writable:
                # Like Hocuspocus' readOnly: the socket keeps syncing, the update is refused and counted.
                self.gw.metrics.access_refused.labels(ENDPOINT, "read_only").inc()
                self.outbox.put(encode_permission_denied("read-only: this token may not write this document"))
                return
            if self.principal.exp <= self.gw.clock.time():  # (the expiry task may not have run yet)
                self.token_ended("token_expired")
                return
            await self.apply(update)
        elif isinstance(msg, AwarenessMessage):
            change = room.awareness.apply(msg.entries, connection=self.conn_id, user=self.principal.user,
                                          now_ms=clock_ms(self.gw))
            if change.update is not None:
                frame = encode_awareness(change.update)
                room.broadcast(frame, skip=self.conn_id)
                self._relay({"kind": "awareness", "update": change.update})
        elif isinstance(msg, QueryAwareness):
            self.outbox.put(encode_awareness(room.awareness.encode()))
        elif isinstance(msg, PermissionDenied):
            pass

    async def apply(self, update: bytes) -> None:
        try:
            await self.gw.quota.check(self.room.tenant, len(update))
        except QuotaExceeded as e:
            log.info("yjs.quota_exceeded", doc=self.room.doc, **e.details)
            self.outbox.close(e.ws_close, e.code)
            return
        await self.gw.yjs.submit(self.room, update, self)

    def _relay(self, msg: dict) -> None:
        hub = self.gw.hub
        if hub.redis_state != "disabled":
            msg["node"] = hub.node
            hub.publish(doc_channel(self.room.tenant, self.room.doc), msg, skip=None)

    def closed(self) -> None:
        room = self.room
        change = room.awareness.disconnect(self.conn_id, now_ms=clock_ms(self.gw))
        room.conns.pop(self.conn_id, None)
        if change.update is not None:
            room.broadcast(encode_awareness(change.update))
            self._relay({"kind": "awareness", "update": change.update})


@websocket("/v1/yjs/{doc:str}", summary="Yjs (y-websocket protocol)")
async def yjs_ws(socket: WebSocket, doc: str) -> None:
    gw: Gateway = socket.app.state.gateway
    clear()
    try:
        principal = authenticate(gw, socket)
    except Unauthenticated as e:
        await refuse(gw, socket, ENDPOINT, e.ws_close, e.code)
        return
    if not principal.can(READ):
        await refuse(gw, socket, ENDPOINT, WS_FORBIDDEN, "forbidden")
        return
    wanted = query_params(socket).get("tenant")
    if wanted and wanted != principal.tenant:
        await gw.security_event(principal, "cross_tenant_ws", target=wanted[:80], endpoint=ENDPOINT)
        await refuse(gw, socket, ENDPOINT, WS_FORBIDDEN, "tenant_violation")
        return
    if not DOC_RE.match(doc):
        await refuse(gw, socket, ENDPOINT, WS_PROTOCOL, "invalid_doc")
        return
    refusal = read_refusal(principal, f"doc/{doc}")  # token scopes (engine/access.py)
    if refusal is not None:
        gw.metrics.access_refused.labels(ENDPOINT, refusal.code).inc()
        await refuse(gw, socket, ENDPOINT, WS_FORBIDDEN, refusal.code)
        return
    if gw.shutting_down:
        await refuse(gw, socket, ENDPOINT, WS_GOING_AWAY, "shutting down")
        return
    try:
        room = await gw.yjs.open(principal.tenant, doc)
    except SynclineError as e:
        await refuse(gw, socket, ENDPOINT, ws_close_code(e) if e.http_status != 503 else WS_UNAVAILABLE, e.code)
        return
    await socket.accept()
    conn = YjsConnection(gw, socket, principal, room)
    bind_connection(conn.conn_id, principal, ENDPOINT)
    room.conns[conn.conn_id] = conn
    gw.connections[conn.conn_id] = conn
    gw.expiry.watch(conn.conn_id, principal.exp)
    if gw.revocations.revoked(principal):  # revoked while the handshake was under way
        conn.token_ended("token_revoked")
    gauge = gw.metrics.ws_connections.labels(ENDPOINT)
    gauge.inc()
    log.info("yjs.open", doc=doc, writable=conn.writable)
    try:
        await conn.run()
    except SynclineError as e:
        log.info("yjs.error", code=e.code, error=e.message)
        conn.outbox.close(ws_close_code(e), e.code)
    except Exception:
        log.exception("yjs.failed")
        conn.outbox.close(1011, "internal error")
    finally:
        gauge.dec()
        gw.connections.pop(conn.conn_id, None)
        conn.closed()
        gw.yjs.release(room)
        if not conn.outbox.closed:
            conn.outbox.close(1000, "")
        await conn.outbox.drain(1.0)
        log.info("yjs.close", doc=doc)
