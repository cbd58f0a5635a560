"""uvicorn with a graceful WebSocket shutdown: clients are told why before the sockets close;
WebSocket writes coalesced per event-loop turn (one socket call for a burst of frames); and
the WebSocket implementation chosen by name: ``lean`` (server/lean_ws.py, the default: the
least memory per idle connection) or one of uvicorn's (``auto``, ``websockets``,
``websockets-sansio``, ``wsproto``)."""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import uvicorn
from litestar import Litestar
from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
from uvicorn.importer import import_from_string

from syncline.api.settings import WS_IMPLEMENTATIONS, Settings, default_ws
from syncline.api.transport import Edge  # the Origin allow-list and the security headers

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


def set_nodelay(transport: Any) -> bool:
    """Turn Nagle's algorithm off on a TCP connection. asyncio does it for the sockets it
    creates itself, but not for a listening socket made elsewhere without
    ``IPPROTO_TCP`` (``fd=``, test fixtures): there, a response written as headers then
    body waited for the client's delayed ACK, ~40 ms per request. True if set."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def nodelay_http_protocol(name: str = "auto") -> type:
    """uvicorn's HTTP protocol ``name`` with TCP_NODELAY set on every connection."""
    base = import_from_string(HTTP_PROTOCOLS[name])

    def connection_made(self: Any, transport: Any) -> None:
        set_nodelay(transport)
        base.connection_made(self, transport)

    return type(f"NoDelay{base.__name__}", (base,), {"connection_made": connection_made})


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
                fd: int | None = None, coalesce_writes: bool = True, tls_cert: str | None = None,
                tls_key: str | None = None) -> GatewayServer:
    """``ws``: the WebSocket implementation's name; by default ``SYNCLINE_WS_IMPL`` or
    ``lean``. ``tls_cert`` / ``tls_key``: PEM files; with them HTTP and WebSockets are
    served over TLS (https, wss), whichever WebSocket implementation runs. No ``server``
    header is sent (nothing to fingerprint the version by)."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both a certificate and a key file (--tls-cert and --tls-key)")
    ws = ws or default_ws()
    log_level = os.environ.get("SYNCLINE_LOG_LEVEL", "").strip().lower() or log_level  # (uvicorn's loggers too)
    ws_impl: Any = coalescing_ws_protocol(ws) if coalesce_writes else ws_protocol_class(ws)
    # log_config=None: uvicorn's loggers keep no handlers of their own and reach the root
    # logger, where api/logging.py renders them as JSON lines like every other.
    common: dict[str, Any] = dict(host=host, port=port, log_level=log_level, log_config=None, ws=ws_impl,
                                  lifespan="on",
                                  interface="asgi3", timeout_graceful_shutdown=10, fd=fd, server_header=False,
                                  http=nodelay_http_protocol(), ssl_certfile=tls_cert or None,
                                  ssl_keyfile=tls_key or None)
    s: Settings | None = app.state.get("settings")
    if s is None:
        return GatewayServer(uvicorn.Config(Edge(app), ws_ping_interval=None, **common), app)
    # The limits (docs/security.md#limits): the lean implementation applies all of them;
    # uvicorn's own take the message size and the keepalive.
    lean = ws == "lean"
    config = uvicorn.Config(Edge(app), ws_max_size=s.ws_max_message_bytes,
                            ws_ping_interval=None if lean else (s.ws_ping_interval_s or None),
                            ws_ping_timeout=None if lean else (s.ws_idle_timeout_s or None), **common)
    config.lean_limits = WsLimits(  # type: ignore[attr-defined]
        preauth_max=s.ws_preauth_max_bytes, message_timeout_s=s.ws_message_timeout_s,
        handshake_timeout_s=s.ws_handshake_timeout_s, close_timeout_s=s.ws_close_timeout_s,
        close_discard_max=s.ws_close_discard_bytes, ping_interval_s=s.ws_ping_interval_s,
        idle_timeout_s=s.ws_idle_timeout_s, inbox_max_bytes=s.ws_inbox_max_bytes)
    return GatewayServer(config, app)
