"""The app factory: ``create_app(settings, store=None)`` builds the Litestar gateway."""
from __future__ import annotations

import time
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry.trace import SpanKind

from syncline.engine.errors import SynclineError
from syncline.store import open_store
from syncline.store.audit import audit_options
from syncline.store.records_service import RecordsService

from . import (
    routes_activity,
    routes_admin,
    routes_app,
    routes_bus,
    routes_bus_consumers,
    routes_commands,
    routes_config,
    routes_docs,
    routes_events,
    routes_health,
    routes_ops,
    routes_rooms,
    ws_native,
    ws_yjs,
)
from .body import BodyCheckedRequest, declare_binary_chunks, declare_errors
from .bus_runtime import BusRuntime, check_relay
from .config_file import resolution_from_settings
from .deps import require_auth
from .errors import error_body
from .gateway import Clock, Gateway
from .limits import limits_middleware
from .logging import bind, clear, configure_logging, log, new_correlation_id
from .ops import default_resolution
from .settings import Settings, check_startup_secrets
from .tracing import current_trace_id, parse_traceparent, setup_tracing, span

CORRELATION_HEADER = "x-correlation-id"


def _syncline_error(request: Request, exc: SynclineError) -> Response:
    gw = request.app.state.get("gateway")  # (None while the app starts)
    if exc.http_status == 403 and gw is not None:  # refusals of the access rule (engine/access.py), permissions
        gw.metrics.access_refused.labels("rest", exc.code).inc()
    if exc.http_status >= 500:
        # A store or driver failure: the client gets the code and a fixed text; the
        # database's words (and the details) go to the log only (docs/security.md#bad-input-and-clocks).
        log.error("http.server_error", path=request.url.path, code=exc.code, error=exc.message[:500])
        if gw is not None:
            gw.metrics.errors_masked.labels(exc.code).inc()
    return Response(exc.public_dict(), status_code=exc.http_status)


def _http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    code = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large", 429: "rate_limited"}.get(status, "http_error")
    details: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        details["errors"] = exc.extra
    # (405 carries ``Allow``: RFC 9110 requires it, and Litestar puts it on the exception)
    return Response(error_body(code, exc.detail, **details), status_code=status, headers=exc.headers or None)


def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("http.internal_error", path=request.url.path)
    gw = request.app.state.get("gateway")
    if gw is not None:
        gw.metrics.errors_masked.labels("internal").inc()
    return Response(error_body("internal", "internal server error"), status_code=500)


def _given_headers(scope: Scope) -> tuple[str | None, bytes]:
    """The client's ``X-Correlation-ID`` (or ``X-Request-ID``) and ``traceparent``, read
    straight from the scope. A local name in the middleware would stay alive for a
    WebSocket's whole life (the middleware frame is suspended in ``await app(...)``), so
    nothing decoded is kept."""
    correlation_id = request_id = traceparent = b""
    for name, value in scope.get("headers", ()):
        if name == b"x-correlation-id":
            correlation_id = value
        elif name == b"x-request-id":
            request_id = value
        elif name == b"traceparent":
            traceparent = value
    return (correlation_id or request_id).decode("latin-1") or None, traceparent


def correlation_middleware(app: ASGIApp) -> ASGIApp:
    """Binds a correlation id (``X-Correlation-ID`` or a new one) to every log line of a
    request or connection, echoes it on HTTP responses, and counts HTTP requests.

    A W3C ``traceparent`` header makes the request's span (``HTTP <method> <route>``) its
    child (api/tracing.py); its trace id is on every log line of the request and in the
    ``meta`` of every event the request appends. On a WebSocket upgrade the parsed
    context is left in the scope (``state["trace_parent"]``) for the connection's handler:
    a span as long as a connection would be useless."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        given, traceparent = _given_headers(scope)
        cid = new_correlation_id(given)
        state = scope.setdefault("state", {})
        state["correlation_id"] = cid
        clear()
        bind(correlation_id=cid)
        parent = None
        if traceparent:
            parent = parse_traceparent(traceparent.decode("latin-1"))
            if parent is None:
                _count_invalid_traceparent(scope, "rest" if scope["type"] == "http" else "ws_upgrade")
        if scope["type"] == "websocket":
            if parent is not None:
                state["trace_parent"] = parent
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status_box = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(CORRELATION_HEADER.encode(), cid.encode())]
            await send(message)

        with span("HTTP " + scope["method"], parent=parent, kind=SpanKind.SERVER) as sp:
            trace_id = current_trace_id()
            if trace_id is not None:
                bind(trace_id=trace_id)
            try:
                await app(scope, receive, send_wrapper)
            finally:
                gw = scope["app"].state.get("gateway") if "app" in scope else None
                route = scope.get("path_template") or "unmatched"
                if sp is not None and sp.is_recording():
                    sp.update_name(f"HTTP {scope['method']} {route}")
                    sp.set_attribute("http.route", route)
                    sp.set_attribute("http.response.status_code", status_box[0])
                if gw is not None:
                    gw.metrics.http_requests.labels(scope["method"], route, str(status_box[0])).inc()
                    gw.metrics.http_latency.labels(scope["method"], route).observe(time.perf_counter() - started)
                if route not in ("/healthz", "/metrics"):
                    principal = state.get("principal")
                    log.info("http.request", method=scope["method"], path=scope["path"], route=route,
                             status=status_box[0], ms=round((time.perf_counter() - started) * 1000, 2),
                             tenant=getattr(principal, "tenant", None), user=getattr(principal, "user", None),
                             trace_id=trace_id)

    return middleware


def _count_invalid_traceparent(scope: Scope, path: str) -> None:
    gw = scope["app"].state.get("gateway") if "app" in scope else None
    if gw is not None:
        gw.metrics.traceparent_invalid.labels(path).inc()


def create_app(settings: Settings | None = None, store: Any = None, *, resolution: Any = None,
               clock: Clock | None = None) -> Litestar:
    """The gateway app. ``store``: an open event store (the caller closes it); by default
    one is opened from ``settings.database_url`` at startup and closed at shutdown.
    ``resolution``: the records' :class:`~engine.records.ResolutionConfig`; when it is not
    given, the ``[resolution]`` rules of the configuration file (``settings.resolution_rules``,
    api/config_file.py), else every collection, every field last-writer-wins. The rules in
    force are published at ``GET /v1/config/resolution``. ``clock``: where the gateway reads the time
    (default: the system's; tests pass one they move by hand instead of sleeping)."""
    settings = settings or Settings()
    check_startup_secrets(settings)  # a short secret, or the development one on a public bind: refuse
    check_relay(settings)  # an unknown relay, or one without Redis: refuse
    configure_logging(settings.log_json)
    resolution = (resolution or resolution_from_settings(settings)
                  or default_resolution(settings.records_manual_fields))
    setup_tracing()  # (OTLP export only when the OTEL_* variables ask and the exporter is installed)
    holder: dict[str, Gateway] = {}

    async def on_startup(app: Litestar) -> None:
        owns = store is None
        s = store if store is not None else await open_store(
            settings.database_url, poll_interval_s=settings.poll_interval_s, **audit_options(settings)
        )
        records = RecordsService(
            s, resolution, clock_ms=lambda: int(holder["gw"].clock.time() * 1000),
            max_clock_skew_ms=settings.max_clock_skew_ms, max_clock_counter=settings.max_clock_counter,
            max_clock_entries=settings.max_clock_entries, causal_clocks=True)
        gw = Gateway(settings, s, owns_store=owns, records=records, clock=clock)
        app.state.gateway = gw
        holder["gw"] = gw
        declare_binary_chunks(app)
        await gw.start()
        # the bus's per-group metrics and, if configured, the Redis Streams relay (api/bus_runtime.py)
        app.state.bus_runtime = BusRuntime(settings, s, gw.metrics.registry)
        await app.state.bus_runtime.start()
        log.info("gateway.started", database=settings.database_url.split("://")[0], redis=bool(settings.redis_url))

    async def on_shutdown(app: Litestar) -> None:
        runtime = getattr(app.state, "bus_runtime", None)
        if runtime is not None:
            await runtime.close()
        gw = holder.get("gw")
        if gw is not None:
            await gw.close()

    v1_modules = (routes_events, routes_docs, routes_commands, routes_rooms, routes_bus, routes_bus_consumers,
                  routes_activity, routes_admin, routes_ops, routes_config)
    # (every route: a new module cannot be missed)
    for handler in _http_handlers(*v1_modules, routes_health, routes_app):
        declare_errors(handler)
    v1 = Router(path="/v1", guards=[require_auth], route_handlers=[h for m in v1_modules for h in m.V1])
    legacy = Router(path="/api", guards=[require_auth], route_handlers=[*routes_events.LEGACY])
    app = Litestar(
        route_handlers=[*routes_health.ROUTES, *routes_app.ROUTES, routes_app.app_router(), v1, legacy,
                        ws_native.native_ws, ws_yjs.yjs_ws],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        middleware=[correlation_middleware, limits_middleware],
        exception_handlers={
            SynclineError: _syncline_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="Syncline",
            version="0.1.0",
            description="Event-sourced CRDT sync engine. Errors are JSON objects with a stable `code`.",
            path="/schema",
        ),
        request_max_body_size=max(settings.max_payload * 2, 1024 * 1024),
        request_class=BodyCheckedRequest,
        debug=False,
        logging_config=None,  # (api/logging.py configures the process's logging: JSON lines)
    )
    app.state.settings = settings  # (server/serving.py reads the transport limits from it)
    return app


def _http_handlers(*modules: Any) -> list[Any]:
    return [h for m in modules for h in (*getattr(m, "V1", ()), *getattr(m, "LEGACY", ()), *getattr(m, "ROUTES", ()))]
