"""uvicorn with a graceful WebSocket shutdown: clients are told why before the sockets close;
WebSocket writes coalesced per event-loop turn (one socket call for a burst of frames); and
the WebSocket implementation chosen by name: ``lean`` (server/lean_ws.py, the default: the
least memory per idle connection) or one of uvicorn's (``auto``, ``websockets``,
``websockets-sansio``, ``wsproto``)."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from litestar import Litestar
from uvicorn.config import WS_PROTOCOLS
from uvicorn.importer import import_from_string

from syncline.api.settings import WS_IMPLEMENTATIONS, Settings, default_ws

from .lean_ws import LeanWebSocketProtocol, WsLimits


class CoalescingTransport:
    """A transport whose writes made during one event-loop turn reach the socket as one
    ``write``. A room update fanned out to a reader, or a burst of frames drained from its
    outbox, used to cost one ``send`` system call per frame; now it costs one per turn.
    Order is kept (one buffer, flushed before close / EOF); latency grows by at most the
    rest of the current turn. Everything else goes to the real transport."""

    __slots__ = ("_transport", "_loop", "_buf")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buf: list[bytes] | None = None  # None: nothing waiting and no flush scheduled

    def write(self, data: bytes) -> None:
        if not data:
            return
        buf = self._buf
        if buf is None:
            self._buf = [data]
            self._loop.call_soon(self._flush)
        else:
            buf.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        buf, self._buf = self._buf, None
        if buf and not self._transport.is_closing():
            self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._buf = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._buf or ()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing_ws_protocol(ws: str | type) -> type | None:
    """uvicorn's WebSocket protocol class ``ws`` with its transport wrapped in a
    :class:`CoalescingTransport`."""
    base = ws_protocol_class(ws) if isinstance(ws, str) else ws
    if base is None:
        return None

    def connection_made(self: Any, transport: Any) -> None:
        base.connection_made(self, CoalescingTransport(transport, asyncio.get_running_loop()))

    return type(f"Coalescing{base.__name__}", (base,), {"connection_made": connection_made})


def ws_protocol_class(name: str) -> type | None:
    """The WebSocket protocol class for an implementation name (see WS_IMPLEMENTATIONS)."""
    if name == "lean":
        return LeanWebSocketProtocol
    if name not in WS_IMPLEMENTATIONS:
        raise ValueError(f"unknown WebSocket implementation {name!r}; choose from {', '.join(WS_IMPLEMENTATIONS)}")
    return import_from_string(WS_PROTOCOLS[name])


class GatewayServer(uvicorn.Server):
    """On shutdown, first let the gateway send every connection a ``disconnect`` message with
    the reason and flush its queue (close 1001); then uvicorn's own shutdown runs."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self.gateway_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gw = self.gateway_app.state.get("gateway")
        if gw is not None:
            try:
                await asyncio.wait_for(gw.shutdown("server shutting down"), gw.settings.shutdown_grace_s + 1)
            except Exception:
                pass
        await super().shutdown(sockets)


def make_server(app: Litestar, host: str, port: int, *, log_level: str = "warning", ws: str | None = None,
                fd: int | None = None, coalesce_writes: bool = True) -> GatewayServer:
    """``ws``: the WebSocket implementation's name; by default ``SYNCLINE_WS_IMPL`` or
    ``lean``."""
    ws = ws or default_ws()
    ws_impl: Any = coalescing_ws_protocol(ws) if coalesce_writes else ws_protocol_class(ws)
    s: Settings | None = app.state.get("settings")
    if s is None:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws=ws_impl, lifespan="on",
                                timeout_graceful_shutdown=10, fd=fd, ws_ping_interval=None)
        return GatewayServer(config, app)
    # The limits (docs/_security_limits.md): the lean implementation applies all of them;
    # uvicorn's own take the message size and the keepalive.
    lean = ws == "lean"
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws=ws_impl, lifespan="on",
                            timeout_graceful_shutdown=10, fd=fd, ws_max_size=s.ws_max_message_bytes,
                            ws_ping_interval=None if lean else (s.ws_ping_interval_s or None),
                            ws_ping_timeout=None if lean else (s.ws_idle_timeout_s or None))
    config.lean_limits = WsLimits(  # type: ignore[attr-defined]
        preauth_max=s.ws_preauth_max_bytes, message_timeout_s=s.ws_message_timeout_s,
        handshake_timeout_s=s.ws_handshake_timeout_s, close_timeout_s=s.ws_close_timeout_s,
        close_discard_max=s.ws_close_discard_bytes, ping_interval_s=s.ws_ping_interval_s,
        idle_timeout_s=s.ws_idle_timeout_s, inbox_max_bytes=s.ws_inbox_max_bytes)
    return GatewayServer(config, app)
