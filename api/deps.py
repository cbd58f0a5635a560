"""Request-side helpers shared by the REST routes: the authenticated principal, the tenant
scope (with the audited super-admin cross-tenant read), idempotency keys, permissions."""
from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.handlers.base import BaseRouteHandler

from syncline.engine import access
from syncline.engine.events import check_tenant

from .auth import CROSS_TENANT, READ, Principal, bearer_token
from .errors import (
    Forbidden,
    IdempotencyKeyRequired,
    JustificationRequired,
    TenantViolation,
    Unauthenticated,
)
from .gateway import Gateway
from .logging import bind, login_refused

IDEMPOTENCY_HEADER = "idempotency-key"
JUSTIFICATION_HEADER = "x-justification"
TENANT_HEADER = "x-tenant"


def gateway_of(conn: ASGIConnection) -> Gateway:
    return conn.app.state.gateway


async def require_auth(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Router guard: verify the bearer token and the handler's permission (``opt["perm"]``)."""
    gw = gateway_of(connection)
    try:
        principal = gw.verifier.verify(bearer_token(connection.headers))
    except Unauthenticated as e:
        gw.metrics.auth_failures.labels(e.code).inc()
        login_refused(connection.scope, endpoint="rest", code=e.code)
        raise
    connection.state.principal = principal
    bind(tenant=principal.tenant, user=principal.user)  # (every later line of this request)
    perm = handler.opt.get("perm", READ)
    if not principal.can(perm):
        raise Forbidden(f"the token lacks the {perm!r} permission", needed=perm)


def principal_of(request: Request) -> Principal:
    return request.state.principal


async def read_scope(request: Request, *, resource: str) -> str:
    """The tenant a read applies to: the token's, or (super-admin only, with
    ``X-Justification``) the one named by ``X-Tenant`` / ``?tenant=`` — audited."""
    p = principal_of(request)
    wanted = request.headers.get(TENANT_HEADER) or request.query_params.get("tenant")
    if not wanted or wanted == p.tenant:
        return p.tenant
    gw = gateway_of(request)
    if not p.can(CROSS_TENANT):
        await gw.security_event(p, "cross_tenant_attempt", target=wanted, resource=resource)
        raise TenantViolation("this token may not access another tenant", tenant=p.tenant)
    justification = (request.headers.get(JUSTIFICATION_HEADER) or "").strip()
    if not justification:
        raise JustificationRequired("reading another tenant needs an X-Justification header")
    check_tenant(wanted)
    await gw.audit(
        wanted,
        "audit.cross-tenant-read",
        p,
        {"resource": resource, "justification": justification[:1000], "method": request.method},
        correlation_id=request.state.get("correlation_id"),
    )
    return wanted


async def write_scope(request: Request, body_tenant: Any = None) -> str:
    """Writes always go to the token's tenant; naming another one is a security event."""
    p = principal_of(request)
    named = request.headers.get(TENANT_HEADER) or request.query_params.get("tenant") or body_tenant
    if named and named != p.tenant:
        await gateway_of(request).security_event(p, "cross_tenant_write", target=str(named)[:80])
        raise TenantViolation("writes are scoped to the token's tenant", tenant=p.tenant)
    return p.tenant


def check_stream_access(p: Principal, stream: str) -> None:
    """Refuse reading ``stream`` unless the access rule allows it (engine/access.py:
    system streams, other users' inboxes, token scopes)."""
    access.check_read(p, stream)


def check_stream_write(p: Principal, stream: str) -> None:
    access.check_write(p, stream)


def visible_events(p: Principal, events: Any, request: Request | None = None, path: str = "rest") -> Any:
    """``events`` without those ``p`` may not read (system streams without ``system_read``,
    other users' inboxes, streams outside the token's scopes); counted in /metrics."""
    shown = access.visible(p, events)
    if request is not None and len(shown) != len(events):
        gateway_of(request).metrics.access_hidden.labels(path).inc(len(events) - len(shown))
    return shown


def idempotency_key(request: Request, *, required: bool = False) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        key = key.strip()
        if not key or len(key) > 200:
            raise IdempotencyKeyRequired("Idempotency-Key must be 1-200 characters")
    if required and not key:
        raise IdempotencyKeyRequired("this endpoint requires an Idempotency-Key header")
    return key
