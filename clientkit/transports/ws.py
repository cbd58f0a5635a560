"""WebSocket transport to ``/v1/ws`` (the ``websockets`` client), msgpack frames.

Driver errors are mapped once, here, onto ``TransportError`` / ``EndpointDisabled`` /
``ConnectionClosed`` (httpcore's ``map_exceptions``): nothing from ``websockets``
leaks out.
"""
from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlencode

import websockets
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus, WebSocketException

from syncline.engine import protocol as P
from syncline.engine.errors import ProtocolError

from ..errors import ConnectionClosed, EndpointDisabled, TransportError

log = logging.getLogger("clientkit.ws")


@contextmanager
def _map_exceptions() -> Iterator[None]:
    try:
        yield
    except WsClosed as e:
        code = e.rcvd.code if e.rcvd is not None else None
        raise ConnectionClosed(f"websocket closed ({code})", close_code=code) from None
    except InvalidStatus as e:
        status = e.response.status_code
        if status in (403, 404, 405, 410, 426, 501, 503):
            raise EndpointDisabled(f"websocket refused with HTTP {status}", status=status) from None
        raise TransportError(f"websocket refused with HTTP {status}", status=status) from None
    except (OSError, WebSocketException, TimeoutError) as e:
        raise TransportError(f"websocket failed: {type(e).__name__}: {e}") from None


def _decode(frame: bytes | str) -> dict:
    """``decode_frame`` with the cyclic GC paused: a catch-up frame unpacks into ~10 containers
    per event, all acyclic, and the collections they triggered cost more than the decoding."""
    if not gc.isenabled():
        return P.decode_frame(frame, allowed=P.SERVER_TYPES)
    gc.disable()
    try:
        return P.decode_frame(frame, allowed=P.SERVER_TYPES)
    finally:
        gc.enable()


class WsConnection:
    kind = "ws"

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self.skipped = 0  # server messages that failed validation (logged, dropped)

    async def send(self, msg: dict) -> None:
        with _map_exceptions():
            await self._ws.send(P.encode_frame(msg))

    async def recv(self) -> dict:
        while True:
            with _map_exceptions():
                frame = await self._ws.recv()
            try:
                msg = _decode(frame)
            except ProtocolError as e:
                self.skipped += 1
                log.warning("dropped an invalid server message: %s", e.message)
                continue
            if msg["t"] == P.BYE:
                return msg  # the close follows; the next recv raises ConnectionClosed
            return msg

    async def close(self) -> None:
        try:
            await self._ws.close()
        except Exception:  # noqa: BLE001 - closing a broken socket is best effort
            pass


class WsConnector:
    """Opens ``ws(s)://host/v1/ws?token=...&client=...``; a 4503 close or a refused
    upgrade raises ``EndpointDisabled`` (the caller switches to polling)."""

    def __init__(self, base_url: str, token: str, *, open_timeout_s: float = 5.0,
                 compression: str | None = None) -> None:
        self.url = base_url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://") + "/v1/ws"
        self.token = token
        self.open_timeout_s = open_timeout_s
        # No permessage-deflate unless asked ("deflate"): the server compresses every frame of
        # every connection, and on a catch-up that was a quarter of its CPU. Frames are
        # msgpack already; ask for it on slow, metered links.
        self.compression = compression

    def set_token(self, token: str) -> None:
        """The token the next connection opens with (the client kit's token provider)."""
        self.token = token

    async def open(self, client: str = "") -> WsConnection:
        q = urlencode({"token": self.token, **({"client": client} if client else {})})
        with _map_exceptions():
            ws = await websockets.connect(f"{self.url}?{q}", subprotocols=[P.SUBPROTOCOL_MSGPACK],
                                          open_timeout=self.open_timeout_s, max_size=P.MAX_FRAME_BYTES,
                                          ping_interval=None, close_timeout=2, compression=self.compression)
        conn = WsConnection(ws)
        return conn


def is_disabled(err: BaseException) -> bool:
    return isinstance(err, EndpointDisabled) or (
        isinstance(err, ConnectionClosed) and err.close_code == P.CLOSE_DISABLED)
