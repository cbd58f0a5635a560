"""Shared WebSocket plumbing: authenticate after accept, a bounded ordered outbox, close once."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from litestar import WebSocket

from .auth import Principal, bearer_token
from .errors import TokenMalformed, Unauthenticated, WS_TRY_AGAIN
from .gateway import Gateway
from .logging import bind, log

OUTBOX_FRAMES_MAX = 4096
_CLOSE = object()


def query_params(socket: WebSocket) -> dict[str, str]:
    return {k: v for k, v in socket.query_params.items()}


def authenticate(gw: Gateway, socket: WebSocket) -> Principal:
    try:
        token = bearer_token(socket.headers, query_params(socket))
    except TokenMalformed:
        raise
    try:
        return gw.verifier.verify(token)
    except Unauthenticated as e:
        gw.metrics.auth_failures.labels(e.code).inc()
        raise


class Outbox:
    """Frames to one socket, written in order by one task. Bounded: a consumer that falls
    this far behind is closed with 1013 and resumes from its cursor (the log keeps the data)."""

    def __init__(self, socket: WebSocket, endpoint: str, metrics: Any) -> None:
        self.socket = socket
        self.endpoint = endpoint
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue(OUTBOX_FRAMES_MAX)
        self.closed = False
        self.close_code: int | None = None
        self.task = asyncio.create_task(self._run())

    def put(self, frame: str | bytes) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(WS_TRY_AGAIN, "too slow: outbox full; reconnect and resume")

    def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        try:
            self.queue.put_nowait((_CLOSE, code, reason))
        except asyncio.QueueFull:
            # Make room for the close: drop what is queued (the client resumes from its cursor).
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait((_CLOSE, code, reason))

    async def _run(self) -> None:
        sent = self.metrics.ws_messages.labels(self.endpoint, "out")
        try:
            while True:
                frame = await self.queue.get()
                if isinstance(frame, tuple) and frame and frame[0] is _CLOSE:
                    _, code, reason = frame
                    self.metrics.ws_closes.labels(self.endpoint, str(code)).inc()
                    await self.socket.close(code=code, reason=reason[:120])
                    return
                if isinstance(frame, bytes):
                    await self.socket.send_bytes(frame)
                else:
                    await self.socket.send_text(frame)
                sent.inc()
        except Exception:  # the peer went away; the reader notices and cleans up
            self.closed = True

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except (asyncio.TimeoutError, Exception):
            self.task.cancel()


async def refuse(gw: Gateway, socket: WebSocket, endpoint: str, code: int, reason: str) -> None:
    """Accept, then close with a 4xxx code: browsers only see close codes after a handshake."""
    subprotocols = socket.scope.get("subprotocols") or []
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
