"""Limits enforced before a request or a WebSocket reaches its handler (docs/security.md#limits).

One ASGI middleware (:func:`limits_middleware`):

- WebSockets: at most ``ws_max_connections_per_ip`` open connections per client address
  (checked before authentication) and ``ws_max_connections_per_user`` per (tenant, user)
  (native and Yjs together); a user banned by a rate limit (native or Yjs) is refused on
  the Yjs endpoint too. Refusals are ``4429`` closes after the handshake (browsers only
  see close codes after one), reason ``too_many_connections`` or ``rate_limited``.
- REST (``/v1/…``, ``/api/…``): at most ``rest_rate_requests`` per ``rest_rate_window_s``
  per (tenant, user), or per client address for requests without a valid token; past it
  ``429`` with ``Retry-After`` and the JSON body ``{"code": "rate_limited", …}``. With
  Redis the windows are shared by every gateway (api/ratelimit.py ``SharedWindows``).

Every refusal is counted in ``syncline_limits_hit_total{limit}``.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from syncline.engine.errors import SynclineError

from .auth import Principal, bearer_token
from .ratelimit import SharedWindows, Windows

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from .gateway import Gateway
    from .settings import Settings

RATE_LIMITED_CLOSE = 4429


class ConnectionCaps:
    """Open WebSocket connections per client address and per (tenant, user), in this gateway."""

    def __init__(self, per_user: int, per_ip: int) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self.by_user: dict[tuple[str, str], int] = {}
        self.by_ip: dict[str, int] = {}

    def take_ip(self, ip: str) -> bool:
        n = self.by_ip.get(ip, 0)
        if self.per_ip and n >= self.per_ip:
            return False
        self.by_ip[ip] = n + 1
        return True

    def take_user(self, key: tuple[str, str]) -> bool:
        n = self.by_user.get(key, 0)
        if self.per_user and n >= self.per_user:
            return False
        self.by_user[key] = n + 1
        return True

    @staticmethod
    def _give(counts: dict, key: Any) -> None:
        n = counts.get(key, 0) - 1
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)

    def give_ip(self, ip: str) -> None:
        self._give(self.by_ip, ip)

    def give_user(self, key: tuple[str, str]) -> None:
        self._give(self.by_user, key)


def rest_windows(settings: Settings, metrics: Any) -> Windows:
    if settings.redis_url:
        return SharedWindows(settings.redis_url, settings.rest_rate_requests, settings.rest_rate_window_s,
                             metrics=metrics)
    return Windows(settings.rest_rate_requests, settings.rest_rate_window_s)


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _headers(scope: Scope) -> dict[str, str]:
    return {"authorization": v.decode("latin-1") for k, v in scope.get("headers") or () if k == b"authorization"}


def _principal(gw: Gateway, scope: Scope, websocket: bool) -> Principal | None:
    """The token's principal, or None if there is none or it does not verify (the handler
    then refuses the request; its failure is counted there, not here)."""
    try:
        query = None
        if websocket:
            raw = scope.get("query_string") or b""
            query = dict(parse_qsl(raw.decode("latin-1"))) if raw else {}
        token = bearer_token(_headers(scope), query)
        return gw.verifier.verify(token) if token else None
    except SynclineError:
        return None


async def _refuse_ws(receive: Receive, send: Send, reason: str) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": RATE_LIMITED_CLOSE, "reason": reason})


async def _too_many_requests(send: Send, retry_after: float, limit: int, window_s: float) -> None:
    seconds = max(1, math.ceil(retry_after))
    body = json.dumps({"code": "rate_limited", "message": "too many requests",
                       "details": {"retry_after_s": seconds, "limit": limit, "window_s": window_s}}).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(seconds).encode())]})
    await send({"type": "http.response.body", "body": body})


def limits_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        gw: Gateway | None = scope["app"].state.get("gateway") if "app" in scope else None
        if gw is None or kind not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        if kind == "http":
            path = scope.get("path") or ""
            if not path.startswith(("/v1/", "/api/")) or gw.settings.rest_rate_requests <= 0:
                await app(scope, receive, send)
                return
            p = _principal(gw, scope, False)
            key = ("rest", p.tenant, p.user) if p is not None else ("rest-ip", _client_ip(scope))
            ok, retry = await gw.rest_windows.hit(key, gw.clock.time())
            if not ok:
                gw.metrics.limits_hit.labels("rest_rate").inc()
                gw.metrics.rate_limited.labels("rest").inc()
                await _too_many_requests(send, retry, gw.settings.rest_rate_requests, gw.settings.rest_rate_window_s)
                return
            await app(scope, receive, send)
            return
        caps, ip = gw.conn_caps, _client_ip(scope)
        if not caps.take_ip(ip):
            gw.metrics.limits_hit.labels("connections_per_ip").inc()
            await _refuse_ws(receive, send, "too_many_connections")
            return
        try:
            p = _principal(gw, scope, True)
            if p is None:  # the handler refuses it (4401)
                await app(scope, receive, send)
                return
            user = (p.tenant, p.user)
            if (scope.get("path") or "").startswith("/v1/yjs/"):
                banned = await gw.bans.check(user, gw.clock.monotonic())
                if banned:
                    gw.metrics.ws_closes.labels("yjs", str(RATE_LIMITED_CLOSE)).inc()
                    await _refuse_ws(receive, send, f"rate_limited; retry in {banned:.0f}s")
                    return
            if not caps.take_user(user):
                gw.metrics.limits_hit.labels("connections_per_user").inc()
                await _refuse_ws(receive, send, "too_many_connections")
                return
            try:
                await app(scope, receive, send)
            finally:
                caps.give_user(user)
        finally:
            caps.give_ip(ip)

    return middleware


class YjsRate:
    """One Yjs connection's write rate: token buckets of messages and of bytes
    (``yjs_rate_*`` settings). Made on the connection's first message."""

    __slots__ = ("messages", "bytes")

    def __init__(self, settings: Settings, now: float) -> None:
        from syncline.engine.ratelimit import TokenBucket

        self.messages = TokenBucket(settings.yjs_rate_messages_per_s, settings.yjs_rate_messages_burst, now)
        self.bytes = TokenBucket(settings.yjs_rate_bytes_per_s, settings.yjs_rate_bytes_burst, now)

    def allow(self, now: float, size: int) -> bool:
        """(A burst of 0 turns that bucket off.)"""
        return ((self.messages.burst <= 0 or self.messages.take(now))
                and (self.bytes.burst <= 0 or self.bytes.take(now, size)))
