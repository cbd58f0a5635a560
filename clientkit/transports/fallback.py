"""WebSocket first, HTTP polling when the WebSocket cannot be opened or keeps failing,
and back to the WebSocket as soon as a probe connects.

Rules:
- the endpoint is disabled (4503, or the upgrade refused with 403/404/...): poll now;
- ``ws_failures_max`` failures in a row (refused, or connections that died within
  ``healthy_after_s``): poll;
- while polling, the polling connection probes the WebSocket every
  ``probe_interval_s``; a successful probe ends it with ``upgrade=True`` and the next
  ``open`` tries the WebSocket first again.
"""
from __future__ import annotations

import time

from ..errors import ConnectionClosed, EndpointDisabled, TransportError
from .polling import PollingConnector
from .ws import WsConnection, WsConnector


class _TrackedWs:
    """A WsConnection that remembers when it opened and how it ended."""

    kind = "ws"

    def __init__(self, conn: WsConnection, owner: "FallbackConnector") -> None:
        self._conn = conn
        self._owner = owner
        self._opened = time.monotonic()

    async def send(self, msg: dict) -> None:
        try:
            await self._conn.send(msg)
        except TransportError as e:
            self._ended(e)
            raise

    async def recv(self) -> dict:
        try:
            return await self._conn.recv()
        except TransportError as e:
            self._ended(e)
            raise

    def _ended(self, e: TransportError) -> None:
        if isinstance(e, ConnectionClosed) and e.close_code == 4503:
            self._owner.ws_failures = self._owner.ws_failures_max
        elif time.monotonic() - self._opened < self._owner.healthy_after_s:
            self._owner.ws_failures += 1

    async def close(self) -> None:
        await self._conn.close()


class FallbackConnector:
    def __init__(self, base_url: str, token: str, *, ws_url: str | None = None, ws_failures_max: int = 2,
                 healthy_after_s: float = 2.0, probe_interval_s: float = 5.0, poll_interval_s: float = 0.5,
                 open_timeout_s: float = 5.0) -> None:
        self.ws = WsConnector(ws_url or base_url, token, open_timeout_s=open_timeout_s)
        self.poll = PollingConnector(base_url, token, poll_interval_s=poll_interval_s, probe=self._probe,
                                     probe_interval_s=probe_interval_s)
        self.ws_failures = 0
        self.ws_failures_max = ws_failures_max
        self.healthy_after_s = healthy_after_s
        self.mode = "ws"
        self._client = ""

    async def open(self, client: str = ""):
        self._client = client
        if self.ws_failures < self.ws_failures_max:
            try:
                conn = await self.ws.open(client)
                self.mode = "ws"
                return _TrackedWs(conn, self)
            except EndpointDisabled:
                self.ws_failures = self.ws_failures_max
            except TransportError:
                self.ws_failures += 1
                if self.ws_failures < self.ws_failures_max:
                    raise
        conn = await self.poll.open(client)
        self.mode = "poll"
        return conn

    def set_token(self, token: str) -> None:
        self.ws.set_token(token)
        self.poll.set_token(token)

    async def _probe(self) -> bool:
        try:
            conn = await self.ws.open(self._client)
        except TransportError:
            return False
        await conn.close()
        self.ws_failures = 0
        return True

    async def aclose(self) -> None:
        await self.poll.aclose()
