"""Transport hardening at the ASGI edge (docs/_security_tokens.md):

- :func:`origin_middleware`: a WebSocket handshake whose ``Origin`` is not on
  ``SYNCLINE_WS_ALLOWED_ORIGINS`` is refused with 403 before the upgrade (and counted in
  ``syncline_ws_origin_refused_total``). An empty list allows every origin. A handshake
  without an ``Origin`` header (a non-browser client: browsers always send one) is allowed:
  the allow-list is the defence against cross-site WebSocket hijacking by web pages.
- :func:`security_headers` (a ``before_send`` hook): standard security headers on every HTTP response
  (``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and CSP
  ``frame-ancestors 'none'``, ``Referrer-Policy: no-referrer``, and HSTS when served over
  TLS). uvicorn sends no ``server`` header (server/serving.py).
"""
from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from .logging import security_log

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


def _settings(scope: Scope) -> Any:
    app = scope.get("app")
    gw = app.state.get("gateway") if app is not None else None
    return gw, (gw.settings if gw is not None else None)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    if not allowed or "*" in allowed or origin is None:
        return True
    return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}


def origin_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            gw, s = _settings(scope)
            if s is not None and s.ws_allowed_origins:
                origin = None
                for name, value in scope.get("headers", ()):
                    if name == b"origin":
                        origin = value.decode("latin-1")
                        break
                if not origin_allowed(origin, s.ws_allowed_origins):
                    gw.metrics.origin_refused.inc()
                    security_log.warning("security.ws_origin_refused", origin=(origin or "")[:200],
                                         path=scope.get("path"))
                    await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
                    return
        await app(scope, receive, send)

    return middleware


async def security_headers(message: Any, scope: Scope) -> None:
    """A Litestar ``before_send`` hook (it sees every HTTP response, 404s of unmatched
    routes included, which route middleware does not)."""
    if message["type"] != "http.response.start" or scope.get("type") != "http":
        return
    headers = list(message.get("headers") or ())
    present = {bytes(n).lower() for n, _ in headers}
    headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
    if scope.get("scheme") == "https" and b"strict-transport-security" not in present:
        _, s = _settings(scope)
        max_age = s.hsts_max_age_s if s is not None else 31_536_000
        if max_age > 0:
            headers.append((b"strict-transport-security", b"max-age=%d" % max_age))
    message["headers"] = [(n, v) for n, v in headers if bytes(n).lower() != b"server"]
