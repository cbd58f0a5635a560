"""Critical commands (interaction class D): REST only, idempotent, one transaction, audited, webhook.

``POST /v1/commands/{type}`` with an ``Idempotency-Key`` appends, in one atomic
multi-stream append (one database transaction), the command event on
``cmd/{command_id}`` and an audit event on ``$audit`` — both ``critical`` (never
pruned). With an audit key configured, the answer waits for a signed checkpoint
covering both (store/audit.py). The command id derives from (tenant, key), so a retry answers with the
same id and writes nothing. The answer is 202 with a status URL. When a webhook is
configured, the command is POSTed there signed with HMAC-SHA256
(``X-Syncline-Signature: sha256=<hex>`` over ``<timestamp>.<body>``), and the
delivery outcome is appended to the command's stream.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
from litestar import Request, Response, get, post

from syncline.engine.errors import NotFound, ValidationError
from syncline.engine.events import Actor, NewEvent, Retention, StreamWrite, check_type

from .auth import READ, WRITE
from .deps import (
    check_stream_access,
    check_stream_write,
    gateway_of,
    idempotency_key,
    principal_of,
    read_scope,
    write_scope,
)
from .gateway import AUDIT_STREAM
from .logging import log

_NS = uuid.UUID("6f1b6d1e-2c4e-4a53-9d0b-5f0c1a1e5a11")
_tasks: set[asyncio.Task] = set()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@post("/commands/{type_:str}", opt={"perm": WRITE}, status_code=202, summary="Submit a critical command")
async def submit_command(request: Request, type_: str, data: dict[str, Any]) -> Response:
    gw = gateway_of(request)
    p = principal_of(request)
    key = idempotency_key(request, required=True)
    check_type(type_)
    tenant = await write_scope(request, data.get("tenant") if isinstance(data, dict) else None)
    command_id = str(uuid.uuid5(_NS, f"{tenant}\x00{key}"))
    stream = f"cmd/{command_id}"
    check_stream_write(p, stream)  # (token scopes: e.g. write:cmd/*)
    cid = request.state.get("correlation_id")
    payload = {k: v for k, v in data.items() if k != "tenant"}
    result = await gw.store.append_many(
        tenant,
        [
            StreamWrite(stream, (NewEvent(type_, data=payload, actor=Actor(p.user), retention=Retention.CRITICAL,
                                          meta={"correlation_id": cid, "idempotency_key": key}),), 0),
            StreamWrite(AUDIT_STREAM, (NewEvent("audit.command", data={"command_id": command_id, "type": type_,
                                                                        "by": {"user": p.user, "tenant": p.tenant}},
                                                actor=Actor(p.user), retention=Retention.CRITICAL,
                                                meta={"correlation_id": cid}),)),
        ],
        idempotency_key=f"cmd:{key}",
    )
    gw.metrics.events_appended.labels("command").inc(2 if not result.duplicate else 0)
    signer = getattr(gw.store, "signer", None)
    if signer is not None and not result.duplicate:
        await signer.sync()  # every class-D command is covered by a signed checkpoint before it is answered
    status_url = f"/v1/commands/{command_id}"
    if gw.settings.webhook_url and not result.duplicate:
        t = asyncio.create_task(_webhook(gw, tenant, command_id, type_, payload, result.first_position))
        _tasks.add(t)
        t.add_done_callback(_tasks.discard)
    return Response(
        {"command_id": command_id, "status": "committed", "status_url": status_url,
         "position": result.first_position, "duplicate": result.duplicate},
        status_code=202,
        headers={"Location": status_url},
    )


async def _webhook(gw, tenant: str, command_id: str, type_: str, payload: Any, position: int) -> None:
    body = json.dumps({"command_id": command_id, "tenant": tenant, "type": type_, "data": payload,
                       "position": position}, separators=(",", ":"), default=str).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Syncline-Timestamp": ts, "X-Syncline-Command": command_id}
    if gw.settings.webhook_secret:
        headers["X-Syncline-Signature"] = sign(gw.settings.webhook_secret, ts, body)
    outcome: dict[str, Any] = {"url": gw.settings.webhook_url}
    for attempt in range(3):
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                r = await client.post(gw.settings.webhook_url, content=body, headers=headers)
            outcome.update(status=r.status_code, attempts=attempt + 1)
            if r.status_code < 500:
                break
        except Exception as e:
            outcome.update(error=type(e).__name__, attempts=attempt + 1)
        await asyncio.sleep(0.5 * 2 ** attempt)
    ok = 200 <= outcome.get("status", 0) < 300
    try:
        await gw.store.append(tenant, f"cmd/{command_id}", [NewEvent(
            "command.webhook-delivered" if ok else "command.webhook-failed", data=outcome,
            retention=Retention.CRITICAL)])
    except Exception:
        log.exception("command.webhook_record_failed", command_id=command_id)


@get("/commands/{command_id:str}", opt={"perm": READ}, summary="Status of a critical command")
async def command_status(request: Request, command_id: str) -> dict:
    gw = gateway_of(request)
    try:
        uuid.UUID(command_id)
    except ValueError as e:
        raise ValidationError("command ids are UUIDs") from e
    check_stream_access(principal_of(request), f"cmd/{command_id}")  # (token scopes)
    tenant = await read_scope(request, resource=f"command:{command_id}")
    events = await gw.store.read_stream(tenant, f"cmd/{command_id}")
    if not events:
        raise NotFound(f"no command {command_id}")
    first = events[0]
    webhook = None
    for e in events[1:]:
        if e.type.startswith("command.webhook"):
            webhook = {"delivered": e.type.endswith("delivered"), **(e.data or {})}
    return {"command_id": command_id, "type": first.type, "status": "committed", "position": first.position,
            "time": first.to_wire()["time"], "data": first.data, "webhook": webhook}


@post("/ops", opt={"perm": WRITE}, status_code=200, summary="Submit a batch of record ops (per-op outcomes)")
async def submit_ops_rest(request: Request, data: dict[str, Any]) -> dict:
    """``{"ops": [...]}`` in the order the client made them (engine.records wire form);
    the answer has one result per op, in order. Idempotent by op id."""
    from .ops import submit_ops

    await write_scope(request, data.get("tenant"))
    ops = data.get("ops")
    if ops == []:
        return {"results": []}
    return {"results": await submit_ops(gateway_of(request), principal_of(request), "", ops)}


V1 = [submit_command, command_status, submit_ops_rest]
