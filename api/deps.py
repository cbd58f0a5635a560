"""Request-side helpers shared by the REST routes: the authenticated principal, the tenant
scope (with the audited super-admin cross-tenant read), idempotency keys, permissions."""
from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.handlers.base import BaseRouteHandler

from syncline.engine.events import check_tenant, is_system_stream, private_to_others

from .auth import ADMIN, CROSS_TENANT, READ, Principal, bearer_token
from .errors import (
    Forbidden,
    IdempotencyKeyRequired,
    JustificationRequired,
    TenantViolation,
    Unauthenticated,
)
from .gateway import Gateway

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
        raise
    connection.state.principal = principal
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
    if is_system_stream(stream) and not p.can(ADMIN):
        raise Forbidden("system streams need the 'admin' permission", stream=stream)
    if private_to_others(stream, p.user) and not p.can(ADMIN):
        raise Forbidden("a user's inbox (dm/<user>) is readable by that user only", stream=stream)


def visible_events(p: Principal, events: Any) -> Any:
    """Drop other users' inboxes (``dm/<user>``) from what a non-admin reads."""
    if p.can(ADMIN) or not any(private_to_others(e.stream, p.user) for e in events):
        return events
    return tuple(e for e in events if not private_to_others(e.stream, p.user))


def idempotency_key(request: Request, *, required: bool = False) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        key = key.strip()
        if not key or len(key) > 200:
            raise IdempotencyKeyRequired("Idempotency-Key must be 1-200 characters")
    if required and not key:
        raise IdempotencyKeyRequired("this endpoint requires an Idempotency-Key header")
    return key
