"""Liveness, readiness and metrics (unauthenticated: probes and scrapers have no tokens)."""
from __future__ import annotations

import asyncio
import time

from litestar import Request, Response, get

from .auth import ADMIN, bearer_token
from .errors import SynclineError
from .metrics import CONTENT_TYPE_LATEST


def _is_admin(request: Request) -> bool:
    """An ``Authorization: Bearer`` token with the admin permission (no token: anonymous)."""
    gw = request.app.state.gateway
    try:
        token = bearer_token(request.headers)
        return bool(token) and gw.verifier.verify(token).can(ADMIN)
    except SynclineError:
        return False


@get("/healthz", summary="Liveness", sync_to_thread=False)
def healthz() -> dict:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: each dependency's state and active degradation modes")
async def readyz(request: Request) -> Response:
    gw = request.app.state.gateway
    deps: dict[str, dict] = {}
    degradations: list[str] = []
    started = time.perf_counter()
    try:
        head = await asyncio.wait_for(gw.store.head_position(), timeout=2.0)
        deps["store"] = {"state": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        if _is_admin(request):  # the global log head is for admins only (it measures every tenant's traffic)
            deps["store"]["head"] = head
    except Exception as e:
        deps["store"] = {"state": "down", "error": type(e).__name__}
    hub = gw.hub
    # state (combined), listener, publisher, queue_depth, queue_max, sent, dropped{reason}, error
    deps["redis"] = hub.stats()
    if hub.redis_state in ("down", "connecting"):
        degradations.append("fanout_in_process_only")
    if hub.overflowed_recently():  # Redis copies dropped because the publisher queue was full
        degradations.append("fanout_queue_overflow")
    deps["websocket"] = {"state": "draining" if gw.shutting_down else "up", "connections": len(gw.connections)}
    if gw.shutting_down:
        degradations.append("shutting_down")
    deps["prune_job"] = {"state": "enabled" if gw.settings.prune_interval_s > 0 else "disabled",
                         "last": gw.last_prune}
    runtime = getattr(request.app.state, "bus_runtime", None)
    relay = runtime.readiness() if runtime is not None else None
    if relay is not None:  # `serve --relay redis-streams` (api/bus_runtime.py)
        deps["relay"] = relay
        if relay["state"] != "up":
            degradations.append("relay_retrying")
    if deps["store"]["state"] != "up" or gw.shutting_down:
        status, code = "unavailable", 503
    elif degradations:
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return Response({"status": status, "dependencies": deps, "degradations": degradations}, status_code=code)


@get("/metrics", summary="Prometheus metrics", media_type="text/plain")
async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    gw.metrics.ws_connections.labels("native")  # make sure the series exist
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
