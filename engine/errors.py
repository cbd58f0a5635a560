"""Typed errors with stable codes.

Every error Syncline raises on purpose derives from :class:`SynclineError` and
carries a ``code`` (stable, documented, safe to match on) and a human message.
The gateway maps them to HTTP statuses and WebSocket close codes; adapters map
driver exceptions onto them at the transaction boundary, so no SQLAlchemy,
asyncpg or redis exception ever leaks out of store/.
"""
from __future__ import annotations

from typing import Any


class SynclineError(Exception):
    code: str = "internal"
    http_status: int = 500

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    @property
    def public_message(self) -> str:
        """What a client may read: the message of a 4xx error; for a server-side failure
        (5xx: a store or driver error) a fixed text, never the database's words."""
        if self.http_status < 500:
            return self.message
        return _PUBLIC_MESSAGES.get(self.code, "internal server error")

    def public_dict(self) -> dict[str, Any]:
        """``to_dict`` for a client: 5xx errors keep their code, lose message and details."""
        if self.http_status < 500:
            return self.to_dict()
        return {"code": self.code, "message": self.public_message}


class ValidationError(SynclineError):
    """The caller sent something malformed; nothing was written."""

    code = "invalid"
    http_status = 400


class TooManyRooms(ValidationError):
    """A connection asked to join more rooms than ``rooms_max`` (SYNCLINE_ROOMS_MAX_PER_CONNECTION)."""

    code = "too_many_rooms"


class InvalidStreamName(ValidationError):
    code = "invalid_stream"


class InvalidEventType(ValidationError):
    code = "invalid_event_type"


class InvalidTenant(ValidationError):
    code = "invalid_tenant"


class PayloadTooLarge(ValidationError):
    code = "payload_too_large"
    http_status = 413


class UnencodablePayload(ValidationError):
    code = "unencodable_payload"


class InvalidValue(ValidationError):
    """A value the store cannot hold (a number past its column, a NUL character, too
    long for its column): the caller's data, so a 400, never the driver's words."""

    code = "invalid_value"


class ClockSkew(ValidationError):
    """A client clock (HLC) is further ahead of the server's than the configured bound."""

    code = "clock_skew"


class ConcurrencyError(SynclineError):
    """``expected_version`` did not match the stream's version; nothing was written."""

    code = "version_conflict"
    http_status = 409

    def __init__(self, stream: str, expected: int | None, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, expected {expected}",
            stream=stream,
            expected=expected,
            actual=actual,
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IdempotencyMismatch(SynclineError):
    """An idempotency key was reused for a different request."""

    code = "idempotency_key_reused"
    http_status = 422


class UnknownTenant(SynclineError):
    code = "unknown_tenant"
    http_status = 404


class NotFound(SynclineError):
    code = "not_found"
    http_status = 404


class StoreUnavailable(SynclineError):
    """The database is down, locked for too long, or refused the connection."""

    code = "store_unavailable"
    http_status = 503


class IntegrityViolation(SynclineError):
    """The hash chain of a stream does not verify."""

    code = "integrity_violation"
    http_status = 500


class ProtocolError(SynclineError):
    """A peer sent bytes that do not decode to a valid message."""

    code = "protocol_error"
    http_status = 400


class Forbidden(SynclineError):
    """Authenticated, but the claims do not allow this."""

    code = "forbidden"
    http_status = 403
    ws_close = 4403


class TenantViolation(Forbidden):
    """A request or message named another tenant than the token's. Logged as a security event."""

    code = "tenant_violation"


class WebSocketForbidden(Forbidden):
    """Critical commands (class D) are refused over WebSocket: REST only."""

    code = "websocket_forbidden"


class TokenSubjectMismatch(Forbidden):
    """An in-band ``auth`` named another user or tenant than the connection's: refused,
    the connection keeps its current token (and ends at that token's ``exp``)."""

    code = "token_subject_mismatch"


_PUBLIC_MESSAGES = {
    "store_unavailable": "the event store is unavailable; retry later",
    "integrity_violation": "the stored data failed an integrity check",
}
