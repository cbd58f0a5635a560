"""Gateway errors and their one mapping to the wire: HTTP JSON bodies and WebSocket close codes.

Every refusal the gateway makes is a :class:`~engine.errors.SynclineError` with a
stable ``code``; :func:`http_error_body` / :data:`WS_CLOSE` turn it into what the
client sees. Nothing else decides statuses or close codes.
"""
from __future__ import annotations

from typing import Any

from syncline.engine import protocol as P
from syncline.engine.errors import Forbidden, SynclineError, TenantViolation, WebSocketForbidden

# WebSocket close codes: the protocol's (engine/protocol.py, docs/protocol.md), plus two
# standard ones the protocol module does not name.
WS_NORMAL = P.CLOSE_NORMAL
WS_GOING_AWAY = P.CLOSE_GOING_AWAY
WS_INTERNAL = 1011
WS_TRY_AGAIN = 1013
WS_PROTOCOL = P.CLOSE_PROTOCOL_ERROR
WS_UNAUTHENTICATED = P.CLOSE_UNAUTHENTICATED
WS_FORBIDDEN = P.CLOSE_FORBIDDEN
WS_STALE = P.CLOSE_STALE
WS_RATE_LIMITED = P.CLOSE_RATE_LIMITED
WS_UNAVAILABLE = P.CLOSE_DISABLED
WS_QUOTA_EXCEEDED = 4413  # Yjs: the tenant's document quota is used up (docs/security.md#limits)


class Unauthenticated(SynclineError):
    """No token, or a token that does not verify."""

    code = "unauthenticated"
    http_status = 401
    ws_close = WS_UNAUTHENTICATED


class TokenMissing(Unauthenticated):
    code = "token_missing"


class TokenExpired(Unauthenticated):
    code = "token_expired"


class TokenBadSignature(Unauthenticated):
    code = "token_bad_signature"


class TokenMalformed(Unauthenticated):
    code = "token_malformed"


class TokenRevoked(Unauthenticated):
    """The token's ``jti`` was revoked, or its user's tokens issued before its ``iat``."""

    code = "token_revoked"


class InsecureSecret(SynclineError):
    """The JWT secret is too short, empty, or the development one on a public bind: the
    gateway refuses to start (docs/security.md#tokens-and-transport)."""

    code = "insecure_secret"
    http_status = 500


class DevLoginDisabled(Forbidden):
    """``POST /dev/token`` while the server signs with a real secret (or for a non-loopback
    client): the development login mints tokens only with the development secret."""

    code = "dev_login_disabled"


class JustificationRequired(Forbidden):
    code = "justification_required"


class CriticalCommandRefused(Forbidden):
    """Class D (critical) command types go through POST /v1/commands/{type} only (never WebSocket)."""

    code = "critical_requires_command"


# (defined in engine.errors: the session core raises them)
__all__ = ["Forbidden", "TenantViolation", "WebSocketForbidden"]


class InvalidJson(SynclineError):
    """A request body that does not decode: not UTF-8, or nested too deeply."""

    code = "invalid_json"
    http_status = 400
class QuotaExceeded(SynclineError):
    """The tenant's Yjs documents hold as many stored bytes as its quota allows (api/quota.py)."""

    code = "doc_quota_exceeded"
    http_status = 413
    ws_close = WS_QUOTA_EXCEEDED


class IdempotencyKeyRequired(SynclineError):
    code = "idempotency_key_required"
    http_status = 400


class Stale(SynclineError):
    code = "stale"
    http_status = 408
    ws_close = WS_STALE


def ws_close_code(err: BaseException) -> int:
    code = getattr(err, "ws_close", None)
    if code:
        return code
    if isinstance(err, SynclineError):
        if err.http_status == 503:
            return WS_UNAVAILABLE
        if 400 <= err.http_status < 500:
            return WS_PROTOCOL
    return WS_INTERNAL


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return body
