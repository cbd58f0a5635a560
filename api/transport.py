"""Transport hardening at the ASGI edge (docs/security.md#tokens-and-transport), in :class:`Edge`, the
app uvicorn runs (server/serving.py wraps the gateway in it):

- WebSocket ``Origin`` allow-list: a handshake whose ``Origin`` is not on
  ``SYNCLINE_WS_ALLOWED_ORIGINS`` is refused with 403 before the upgrade (logged, and
  counted in ``syncline_ws_origin_refused_total``). An empty list allows every origin. A
  handshake without ``Origin`` (a non-browser client: browsers always send one) is
  allowed: the list is the defence against cross-site WebSocket hijacking by web pages.
- standard security headers on every HTTP response, 404s of unmatched routes included
  (``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and CSP
  ``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer``, and HSTS when served over
  TLS); uvicorn sends no ``server`` header (server/serving.py) and none passes here.

A WebSocket connection keeps no frame of this layer for its life: ``Edge.__call__`` is a
plain function returning the app's own coroutine (an idle connection's memory counts).
"""
from __future__ import annotations

from typing import Any

from .logging import security_log

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    if not allowed or "*" in allowed or origin is None:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}


class Edge:
    """An ASGI 3 app around the gateway app (a Litestar app whose ``state.gateway`` is set
    at startup)."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def _gateway(self) -> Any:
        state = getattr(self.app, "state", None)
        return state.get("gateway") if state is not None else None

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        kind = scope["type"]
        if kind == "http":
            return self._http(scope, receive, send)
        if kind == "websocket":
            gw = self._gateway()
            if gw is not None and gw.settings.ws_allowed_origins:
                origin = None
                for name, value in scope.get("headers") or ():
                    if name == b"origin":
                        origin = value.decode("latin-1")
                        break
                if not origin_allowed(origin, gw.settings.ws_allowed_origins):
                    gw.metrics.origin_refused.inc()
                    security_log.warning("security.ws_origin_refused", origin=(origin or "")[:200],
                                         path=scope.get("path"))
                    return send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        return self.app(scope, receive, send)

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers") or () if bytes(n).lower() != b"server"]
                present = {bytes(n).lower() for n, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                if https and b"strict-transport-security" not in present:
                    gw = self._gateway()
                    max_age = gw.settings.hsts_max_age_s if gw is not None else 31_536_000
                    if max_age > 0:
                        headers.append((b"strict-transport-security", b"max-age=%d" % max_age))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
