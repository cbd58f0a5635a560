"""``GET /v1/ops/stats``: one JSON answer for the operations page (``/app/ops.html``).

What the page charts, for the token's tenant: open connections, room presence and Yjs
document rooms held by this gateway, the gateway's append counters (the page turns two
readings into events/s), consumer groups with their lag, dead letters by status, and the
state of the store and of Redis (as ``/readyz`` reports them).

It reads tenant-wide system state (the bus, every room), so it needs ``system_read``:
the ``admin`` and ``auditor`` roles have it, a ``member`` does not. Dead-letter actions
stay on ``/v1/bus/dead-letters`` (admin only).
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from litestar import Request, get

from syncline.engine.access import SYSTEM_READ

from .deps import gateway_of, read_scope
from .ws_yjs import YjsConnection

DLQ_STATUSES = ("dead", "requeued", "redelivering", "resolved", "discarded")
DLQ_COUNT_MAX = 1000  # dead letters counted per status (the page shows "1000" for "at least 1000")
ROOMS_SHOWN = 50  # the busiest rooms and documents only: the answer stays small with many rooms


def _counter_total(counter: Any) -> float:
    """The sum of a prometheus counter over its labels (its ``_total`` samples)."""
    return sum(s.value for family in counter.collect() for s in family.samples if s.name.endswith("_total"))


def _connections(gw: Any, tenant: str) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for conn in list(gw.connections.values()):
        principal = getattr(conn, "principal", None)
        if principal is not None and principal.tenant == tenant:
            kinds["yjs" if isinstance(conn, YjsConnection) else "native"] += 1
    return {"native": kinds["native"], "yjs": kinds["yjs"], "total": sum(kinds.values())}


def _rooms(gw: Any, tenant: str) -> list[dict[str, Any]]:
    rooms = []
    for (t, room), keys in list(gw.presence.rooms.items()):
        if t == tenant and keys:
            rooms.append({"room": room, "members": len(keys), "users": sorted({k[1] for k in keys})[:20]})
    rooms.sort(key=lambda r: (-r["members"], r["room"]))
    return rooms[:ROOMS_SHOWN]


def _docs(gw: Any, tenant: str) -> list[dict[str, Any]]:
    docs = [{"doc": doc, "connections": len(r.conns)} for (t, doc), r in list(gw.yjs.rooms.items()) if t == tenant]
    docs.sort(key=lambda d: (-d["connections"], d["doc"]))
    return docs[:ROOMS_SHOWN]


async def _store_state(gw: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(gw.store.head_position(), timeout=2.0)
    except Exception as e:  # the page shows the outage; the error's text stays in the log
        return {"state": "down", "error": type(e).__name__}
    return {"state": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "backend": gw.settings.database_url.split("://")[0].split("+")[0]}


@get("/ops/stats", opt={"perm": SYSTEM_READ}, summary="Operations page figures for the token's tenant")
async def ops_stats(request: Request) -> dict:
    from .routes_bus import _bus

    gw = gateway_of(request)
    tenant = await read_scope(request, resource="ops.stats")
    bus = _bus(request)
    dead = {status: len(await bus.dlq.query(scope=tenant, status=status, limit=DLQ_COUNT_MAX))
            for status in DLQ_STATUSES}
    groups = [{"group": g["group"], "lag": g["lag"], "partitions": g["partitions"], "members": len(g["members"]),
               "low_watermark": g["low_watermark"]} for g in await bus.groups(tenant)]
    return {
        "tenant": tenant,
        "time": gw.clock.time(),
        "connections": _connections(gw, tenant),
        "rooms": _rooms(gw, tenant),
        "docs": _docs(gw, tenant),
        "counters": {"events_appended": _counter_total(gw.metrics.events_appended),
                     "yjs_updates": _counter_total(gw.metrics.yjs_updates),
                     "messages": _counter_total(gw.metrics.messages_stored)},
        "groups": groups,
        "dead_letters": dead,
        "store": await _store_state(gw),
        "redis": gw.hub.stats(),
    }


V1 = [ops_stats]
