"""REST for the bus (consumer groups, dead letters) and for record conflicts.

Everything is scoped to the token's tenant (a group's scope is its tenant); the bus
itself is bus/ (its public ``Bus`` API only). Dead-letter actions need ``admin`` and
are recorded by the bus as events on ``$dlq/<group>``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from litestar import Request, get, post, put
from litestar.params import Parameter

from syncline.engine import access
from syncline.engine.errors import ValidationError
from syncline.engine.events import POSITION_MAX
from syncline.engine.records import CONFLICT_DETECTED, CONFLICT_RESOLVED, CONFLICTS_STREAM

from .auth import ADMIN, READ
from .deps import gateway_of, principal_of, read_scope


def _bus(request: Request):
    """The bus, for a caller allowed its tenant-wide, system-stream views: ``admin`` (the
    route's permission) and ``system_read``; a scoped token needs a scope covering ``$dlq/*``."""
    p = principal_of(request)
    access.check_read(p, "$dlq/*")
    gw = gateway_of(request)
    if gw.bus is None:
        from syncline.bus import Bus

        gw.bus = Bus(gw.store)
    return gw.bus


def _text(**values: str | None) -> None:
    """Query filters and ids are stored as text: printable, at most 255 characters
    (a NUL would reach PostgreSQL as a driver error)."""
    for name, value in values.items():
        if value is not None and (len(value) > 255 or not value.isprintable()):
            raise ValidationError(f"{name} must be printable text of at most 255 characters", reason="invalid_text")


def _entry(e: Any) -> dict:
    return dataclasses.asdict(e) if dataclasses.is_dataclass(e) else dict(e)


@get("/bus/groups", opt={"perm": ADMIN}, summary="Consumer groups of this tenant: partitions, members, checkpoints")
async def list_groups(request: Request) -> dict:
    tenant = await read_scope(request, resource="bus.groups")
    return {"groups": await _bus(request).groups(tenant)}


@get("/bus/dead-letters", opt={"perm": ADMIN}, summary="Query dead letters")
async def query_dead_letters(
    request: Request,
    group: str | None = None,
    status: str | None = Parameter(default="dead"),
    stream_prefix: str | None = None,
    type_: str | None = Parameter(default=None, query="type"),
    limit: int = Parameter(default=100, ge=1, le=1000),
    offset: int = Parameter(default=0, ge=0, le=POSITION_MAX),
) -> dict:
    _text(group=group, status=status, stream_prefix=stream_prefix, type=type_)
    tenant = await read_scope(request, resource="bus.dead-letters")
    entries = await _bus(request).dlq.query(scope=tenant, group=group, status=status, stream_prefix=stream_prefix,
                                            type=type_, limit=limit, offset=offset)
    return {"entries": [_entry(e) for e in entries]}


@get("/bus/dead-letters/{entry_id:str}", opt={"perm": ADMIN}, summary="One dead letter")
async def get_dead_letter(request: Request, entry_id: str) -> dict:
    _text(entry_id=entry_id)
    tenant = await read_scope(request, resource=f"bus.dead-letter:{entry_id}")
    return _entry(await _bus(request).dlq.get(entry_id, scope=tenant))


@put("/bus/dead-letters/{entry_id:str}", opt={"perm": ADMIN}, summary="Edit the payload a requeue will deliver")
async def edit_dead_letter(request: Request, entry_id: str, data: dict[str, Any]) -> dict:
    _text(entry_id=entry_id)
    p = principal_of(request)
    if "data" not in data:
        raise ValidationError("send {\"data\": <new payload>}")
    return _entry(await _bus(request).dlq.edit(entry_id, data["data"], by=p.user, scope=p.tenant))


@post("/bus/dead-letters/{entry_id:str}/requeue", opt={"perm": ADMIN}, status_code=200, summary="Requeue")
async def requeue_dead_letter(request: Request, entry_id: str) -> dict:
    _text(entry_id=entry_id)
    p = principal_of(request)
    return _entry(await _bus(request).dlq.requeue(entry_id, by=p.user, scope=p.tenant))


@post("/bus/dead-letters/{entry_id:str}/discard", opt={"perm": ADMIN}, status_code=200, summary="Discard")
async def discard_dead_letter(request: Request, entry_id: str, data: dict[str, Any]) -> dict:
    _text(entry_id=entry_id)
    p = principal_of(request)
    return _entry(await _bus(request).dlq.discard(entry_id, str(data.get("reason") or ""), by=p.user, scope=p.tenant))


@get("/conflicts", opt={"perm": READ}, summary="Open record conflicts (resolve with a `resolve` op)")
async def list_conflicts(request: Request, stream: str | None = None) -> dict:
    gw = gateway_of(request)
    tenant = await read_scope(request, resource="conflicts")
    open_: dict[str, dict] = {}
    for e in await gw.store.read_stream(tenant, CONFLICTS_STREAM):
        data = e.data if isinstance(e.data, dict) else {}
        cid = data.get("conflict")
        if e.type == CONFLICT_DETECTED and cid:
            open_[cid] = {**data, "position": e.position, "time": e.to_wire()["time"]}
        elif e.type == CONFLICT_RESOLVED and cid:
            open_.pop(cid, None)
    # A view of record state (as GET /v1/records shows a record's conflicts): each conflict is
    # shown to whoever may read its record's stream, though $conflicts itself is a system stream.
    p = principal_of(request)
    items = [c for c in open_.values() if (stream is None or c.get("stream") == stream)
             and isinstance(c.get("stream"), str) and access.can_read(p, c["stream"])]
    return {"conflicts": items}


V1 = [list_groups, query_dead_letters, get_dead_letter, edit_dead_letter, requeue_dead_letter, discard_dead_letter,
      list_conflicts]
