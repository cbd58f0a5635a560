"""The connection contract shared by every transport (WebSocket, polling, memory)."""
from __future__ import annotations

from typing import Any, Protocol


class Connection(Protocol):
    kind: str  # "ws" | "poll" | "memory"

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one protocol message; raises ConnectionClosed when the connection is gone."""

    async def recv(self) -> dict[str, Any]:
        """The next validated server message; raises ConnectionClosed at the end."""

    async def close(self) -> None: ...


class Connector(Protocol):
    async def open(self) -> Connection:
        """A new connection; raises TransportError (EndpointDisabled when the WebSocket is off)."""
