"""Shared WebSocket plumbing: authenticate after accept, a bounded ordered outbox, close once."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from litestar import WebSocket

from .auth import Principal, bearer_token
from .errors import WS_TRY_AGAIN, WS_UNAUTHENTICATED, Unauthenticated
from .logging import bind, log, login_refused, peer_of

if TYPE_CHECKING:
    from .gateway import Gateway

OUTBOX_FRAMES_MAX = 4096
_CLOSE = object()


def query_params(socket: WebSocket) -> dict[str, str]:
    """The query string as a dict (last value wins), parsed from the scope each time:
    Litestar's ``socket.query_params`` caches a multi-dict in the scope, which an idle
    connection would keep for its whole life."""
    raw = socket.scope.get("query_string") or b""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


def _authorization(socket: WebSocket) -> dict[str, str]:
    """Only the ``Authorization`` header, read from the scope (no cached Headers object)."""
    for name, value in socket.scope.get("headers") or ():
        if name == b"authorization":
            return {"authorization": value.decode("latin-1")}
    return {}


def authenticate(gw: Gateway, socket: WebSocket) -> Principal:
    token = bearer_token(_authorization(socket), query_params(socket))
    try:
        return gw.verifier.verify(token)
    except Unauthenticated as e:
        gw.metrics.auth_failures.labels(e.code).inc()
        login_refused(socket.scope, endpoint=_endpoint_of(socket.scope), code=e.code)
        raise


def _endpoint_of(scope: Any) -> str:
    path = scope.get("path") or ""
    return "yjs" if path.startswith("/v1/yjs") else "native" if path.startswith("/v1/ws") else "ws"


class Outbox:
    """Frames to one socket, written in order by at most one task at a time. Bounded: a
    consumer that falls this far behind is closed with 1013 and resumes from its cursor
    (the log keeps the data).

    An idle connection holds no queue and no task: the frames wait in a deque made on
    the first :meth:`put`, and the writer task exists only while frames are waiting —
    it drains the deque and ends (a :meth:`put` after that starts a new one). Frames go
    straight to the ASGI ``send`` (Litestar's state check kept, its per-frame helper
    coroutines skipped), and the ``out`` counter is bumped once per drained run."""

    __slots__ = ("socket", "endpoint", "metrics", "_send", "frames", "closed", "close_code", "task")

    def __init__(self, socket: WebSocket, endpoint: str, metrics: Any) -> None:
        self.socket = socket
        self.endpoint = endpoint
        self.metrics = metrics
        self._send = socket.send
        self.frames: deque | None = None
        self.closed = False
        self.close_code: int | None = None
        self.task: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self.frames) if self.frames is not None else 0

    def put(self, frame: str | bytes, commit_us: int | None = None) -> None:
        """Queue a frame. ``commit_us``: the commit time of the newest event it carries;
        when it is written, ``syncline_delivery_latency_seconds`` observes the difference."""
        if self.closed:
            return
        frames = self.frames
        if frames is None:
            frames = self.frames = deque()
        elif len(frames) >= OUTBOX_FRAMES_MAX:
            self.close(WS_TRY_AGAIN, "too slow: outbox full; reconnect and resume")
            return
        frames.append(frame if commit_us is None else (frame, commit_us))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        frames = self.frames
        if frames is None:
            frames = self.frames = deque()
        elif len(frames) >= OUTBOX_FRAMES_MAX:
            # Make room for the close: drop what is queued (the client resumes from its cursor).
            frames.clear()
        frames.append((_CLOSE, code, reason))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        frames, send = self.frames, self._send
        sent = 0
        try:
            while frames:
                frame = frames.popleft()
                kind = type(frame)
                if kind is bytes:
                    await send({"type": "websocket.send", "bytes": frame, "text": None})
                elif kind is str:
                    await send({"type": "websocket.send", "bytes": None, "text": frame})
                elif len(frame) == 2:  # (frame, commit time of its newest event, µs)
                    data, commit_us = frame
                    if type(data) is bytes:
                        await send({"type": "websocket.send", "bytes": data, "text": None})
                    else:
                        await send({"type": "websocket.send", "bytes": None, "text": data})
                    self.metrics.observe_delivery(self.endpoint, max(0.0, time.time() - commit_us / 1_000_000))
                else:  # (_CLOSE, code, reason)
                    _, code, reason = frame
                    self.metrics.ws_closes.labels(self.endpoint, str(code)).inc()
                    await self.socket.close(code=code, reason=reason[:120])
                    frames.clear()
                    return
                sent += 1
        except Exception:  # the peer went away; the reader notices and cleans up
            self.closed = True
            frames.clear()
        finally:
            self.task = None
            if not frames:
                self.frames = None  # idle again: hold no buffer
            if sent:
                self.metrics.ws_messages.labels(self.endpoint, "out").inc(sent)

    async def drain(self, timeout: float) -> None:
        task = self.task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (asyncio.TimeoutError, Exception):
            task.cancel()


async def refuse(gw: Gateway, socket: WebSocket, endpoint: str, code: int, reason: str) -> None:
    """Accept, then close with a 4xxx code: browsers only see close codes after a handshake."""
    subprotocols = socket.scope.get("subprotocols") or []
    if code != WS_UNAUTHENTICATED:  # (a refused token is logged as auth.refused already)
        peer, agent = peer_of(socket.scope)
        log.info("ws.refused", endpoint=endpoint, close=code, reason=reason[:120], peer=peer, user_agent=agent)
    await socket.accept(subprotocols=subprotocols[0] if subprotocols else None)
    gw.metrics.ws_closes.labels(endpoint, str(code)).inc()
    await socket.close(code=code, reason=reason[:120])


def new_conn_id() -> str:
    return uuid.uuid4().hex[:16]


def bind_connection(conn_id: str, principal: Principal, endpoint: str) -> None:
    bind(conn=conn_id, user=principal.user, tenant=principal.tenant, endpoint=endpoint)


def monotonic() -> float:
    return time.monotonic()


__all__ = ["Outbox", "authenticate", "refuse", "new_conn_id", "bind_connection", "log", "monotonic"]
