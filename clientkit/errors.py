"""Typed errors of the client kit (all are SynclineErrors with a stable ``code``).

``LocalProtocolError`` means the caller misused the API (h11's distinction);
``RemoteProtocolError`` means the server sent something we cannot accept.
"""
from __future__ import annotations

from syncline.engine.errors import ProtocolError, SynclineError


class ClientKitError(SynclineError):
    code = "clientkit"


class QueueFull(ClientKitError):
    """The offline op queue holds ``limit`` ops: nothing was queued."""

    code = "queue_full"


class LocalProtocolError(ClientKitError):
    code = "local_protocol_error"


class RemoteProtocolError(ProtocolError):
    code = "remote_protocol_error"


class TransportError(ClientKitError):
    """A connection could not be opened, or it broke."""

    code = "transport_error"


class EndpointDisabled(TransportError):
    """The server refused the WebSocket (close 4503, 404/403 on the upgrade): use polling."""

    code = "endpoint_disabled"


class ConnectionClosed(TransportError):
    code = "connection_closed"

    def __init__(self, message: str = "", *, close_code: int | None = None, upgrade: bool = False,
                 **details) -> None:
        super().__init__(message or "connection closed", close_code=close_code, **details)
        self.close_code = close_code
        self.upgrade = upgrade  # polling ended because the WebSocket works again


class SnapshotRefused(ClientKitError):
    """Every fetched snapshot failed its checksum (after the allowed retries)."""

    code = "snapshot_refused"


class UnknownConflict(LocalProtocolError):
    code = "unknown_conflict"
