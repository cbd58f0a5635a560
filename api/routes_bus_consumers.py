"""REST for remote bus consumers: join, long-poll fetch with a lease, ack, nack, extend, leave.

A consumer in any language joins a consumer group (or a durable or broadcast
subscription) and gets a session (api/bus_sessions.py says what a session does and
how leases, ttl and the dead-letter queue work). Every call names the session in the
path and is checked against the token: a session belongs to the (tenant, user) that
opened it, and any other caller gets ``404 consumer_not_found``. The protocol, with
examples, is docs/protocol.md#bus-consumers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import Parameter

from syncline.engine.consumer_wire import parse_ids, parse_spec
from syncline.engine.errors import SynclineError, TenantViolation, ValidationError

from .auth import READ
from .bus_sessions import ConsumerSession, wire
from .deps import gateway_of, principal_of

WAIT_MAX_S = 30.0
IDS_MAX = 1000
REASON_MAX = 2000
TRACE_MAX = 16_000


@dataclass
class JoinIn:
    group: str | None = None
    kind: str = "group"
    filter: dict[str, Any] | None = None
    lease_s: float | None = None
    max_batch: int | None = None
    ttl_s: float | None = None
    max_attempts: int | None = None
    start_at: str | None = None
    partitions: int | None = None


@dataclass
class IdsIn:
    ids: list[str] = field(default_factory=list)


@dataclass
class NackIn:
    ids: list[str] = field(default_factory=list)
    reason: str = "nacked by consumer"
    delay_s: float | None = None
    trace: str = ""


@dataclass
class ExtendIn:
    ids: list[str] = field(default_factory=list)
    lease_s: float | None = None


def _own_tenant(request: Request) -> None:
    p = principal_of(request)
    named = request.headers.get("x-tenant") or request.query_params.get("tenant")
    if named and named != p.tenant:
        raise TenantViolation("a consumer reads its own tenant only", tenant=p.tenant)


def _session(request: Request, session_id: str) -> ConsumerSession:
    _own_tenant(request)
    return gateway_of(request).consumers.get(session_id, principal_of(request))


def _counted(request: Request, err: SynclineError) -> SynclineError:
    gateway_of(request).consumers.count_refusal(err.code)
    return err


@post("/bus/consumers", opt={"perm": READ}, status_code=201,
      summary="Join a consumer group (or a durable or broadcast subscription) as a remote consumer")
async def join(request: Request, data: JoinIn) -> dict:
    """Returns the session: fetch from ``/v1/bus/consumers/{session}/fetch``. Refusals:
    ``invalid`` (field named in details), ``tenant_violation`` (``filter.tenant`` or
    ``X-Tenant`` naming another tenant), ``too_many_consumers`` (429)."""
    gw = gateway_of(request)
    p = principal_of(request)
    try:
        _own_tenant(request)
        doc = {k: getattr(data, k, None) for k in JoinIn.__dataclass_fields__}
        spec = parse_spec({k: v for k, v in doc.items() if v is not None}, p.tenant, gw.consumers.limits)
    except SynclineError as e:
        if isinstance(e, TenantViolation):
            await gw.security_event(p, "cross_tenant_consumer", target=str((data.filter or {}).get("tenant"))[:80])
        raise _counted(request, e) from None
    session = await gw.consumers.open(spec, p)
    return session.describe()


@get("/bus/consumers/{session_id:str}", opt={"perm": READ}, summary="A consumer session: settings and counts")
async def describe(request: Request, session_id: str) -> dict:
    """(Looking does not keep a session alive: only fetch, ack, nack, extend and heartbeat do.)"""
    return _session(request, session_id).describe()


@post("/bus/consumers/{session_id:str}/fetch", opt={"perm": READ}, status_code=200,
      summary="Long-poll: lease up to max deliveries, waiting up to wait seconds for the first")
async def fetch(
    request: Request, session_id: str,
    wait: float = Parameter(default=0.0, ge=0.0, le=WAIT_MAX_S, description="seconds to wait for a delivery"),
    max: int | None = Parameter(default=None, ge=1, le=100_000, description="at most this many (≤ max_batch)"),
) -> dict:
    s = _session(request, session_id)
    n = min(max or s.spec.max_batch, s.spec.max_batch)
    got = await s.fetch(n, wait)
    now, wall = time.monotonic(), time.time()
    return {"session": s.id, "deliveries": wire(got, now, wall)}


@post("/bus/consumers/{session_id:str}/ack", opt={"perm": READ}, status_code=200, summary="Acknowledge deliveries")
async def ack(request: Request, session_id: str, data: IdsIn) -> dict:
    """``unknown``: ids this session does not hold (never fetched, already settled, or
    their lease expired and they were redelivered)."""
    s = _session(request, session_id)
    ids = parse_ids(data.ids, IDS_MAX)
    unknown = s.ack(ids)
    return {"acked": len(ids) - len(unknown), "unknown": unknown}


@post("/bus/consumers/{session_id:str}/nack", opt={"perm": READ}, status_code=200,
      summary="Fail deliveries: retried after delay_s (or the retry policy's delay), dead-lettered after max_attempts")
async def nack(request: Request, session_id: str, data: NackIn) -> dict:
    s = _session(request, session_id)
    ids = parse_ids(data.ids, IDS_MAX)
    if not isinstance(data.reason, str) or not data.reason or len(data.reason) > REASON_MAX:
        raise ValidationError(f"reason: 1-{REASON_MAX} characters", field="reason")
    if not isinstance(data.trace, str) or len(data.trace) > TRACE_MAX:
        raise ValidationError(f"trace: at most {TRACE_MAX} characters", field="trace")
    delay = data.delay_s
    if delay is not None and (isinstance(delay, bool) or not 0 <= delay <= 3600):
        raise ValidationError("delay_s: 0 to 3600 seconds", field="delay_s")
    unknown = s.nack(ids, data.reason, delay, data.trace)
    return {"nacked": len(ids) - len(unknown), "unknown": unknown}


@post("/bus/consumers/{session_id:str}/extend", opt={"perm": READ}, status_code=200,
      summary="Extend the lease of deliveries (by lease_s, default the session's)")
async def extend(request: Request, session_id: str, data: ExtendIn) -> dict:
    s = _session(request, session_id)
    ids = parse_ids(data.ids, IDS_MAX)
    lease = data.lease_s if data.lease_s is not None else s.spec.lease_s
    if isinstance(lease, bool) or not 0.1 <= lease <= s.registry.limits.lease_max_s:
        raise ValidationError(f"lease_s: 0.1 to {s.registry.limits.lease_max_s:g} seconds", field="lease_s")
    unknown = s.extend(ids, lease)
    return {"extended": len(ids) - len(unknown), "unknown": unknown}


@post("/bus/consumers/{session_id:str}/heartbeat", opt={"perm": READ}, status_code=200,
      summary="Keep an idle session alive (any fetch, ack, nack or extend does too)")
async def heartbeat(request: Request, session_id: str) -> dict:
    s = _session(request, session_id)
    s.touch()
    return {"session": s.id, "ttl_s": s.spec.ttl_s}


@delete("/bus/consumers/{session_id:str}", opt={"perm": READ}, status_code=200,
        summary="Leave: what the session holds goes back to the group (not counted as attempts)")
async def leave(request: Request, session_id: str) -> dict:
    s = _session(request, session_id)
    await gateway_of(request).consumers.close(s, "left")
    return {"session": s.id, "left": True}


V1 = [join, describe, fetch, ack, nack, extend, heartbeat, leave]
