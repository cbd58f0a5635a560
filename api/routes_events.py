"""REST: append to a stream, read a stream, read the log, poll, deltas."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter

from syncline.engine import access
from syncline.engine.documents import CRDT_UPDATE
from syncline.engine.errors import ValidationError
from syncline.engine.events import (
    POSITION_MAX,
    VERSION_MAX,
    StreamWrite,
    check_stream,
    is_dm_stream,
    is_system_stream,
)
from syncline.engine.filters import glob_to_like
from syncline.engine.yupdates import check_update

from .auth import READ, WRITE
from .deps import (
    check_stream_access,
    check_stream_write,
    gateway_of,
    idempotency_key,
    principal_of,
    read_scope,
    visible_events,
    write_scope,
)
from .errors import CriticalCommandRefused, Forbidden
from .tracing import delivery_spans
from .wire import build_filter, check_event_clock, events_wire, from_jsonable, new_events, suggest_poll_interval

LIMIT_MAX = 1000


@dataclass
class EventIn:
    type: str
    data: Any = None
    schema: int = 1
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppendIn:
    events: list[EventIn]
    expected_version: int | None = None
    tenant: str | None = None  # optional; must equal the token's tenant


def _doc_updates(stream: str, items: list[dict]) -> list[bytes]:
    """``crdt.update`` events on ``doc/`` streams must carry a valid Yjs update (bytes, as
    ``{"$b64": ...}`` in JSON): an offline client resubmitting its queued edits."""
    if not stream.startswith("doc/"):
        return []
    updates = []
    for it in items:
        if it["type"] == CRDT_UPDATE:
            if not isinstance(it["data"], bytes):
                raise ValidationError('crdt.update data must be a Yjs update: {"$b64": "<base64>"}')
            updates.append(check_update(it["data"]))
    return updates


def _is_critical(gw, type_: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(type_, pat) for pat in gw.settings.critical_types)


@post("/streams/{stream:path}", opt={"perm": WRITE}, status_code=201, summary="Append events to a stream")
async def append_events(request: Request, stream: str, data: AppendIn) -> dict:
    """Atomic append. ``expected_version`` (0 = the stream must not exist) gives optimistic
    concurrency (409 ``version_conflict``); an ``Idempotency-Key`` header makes a retry
    return the original result (``duplicate: true``) without writing twice."""
    gw = gateway_of(request)
    p = principal_of(request)
    tenant = await write_scope(request, data.tenant)
    # (msgspec may leave defaulted dataclass fields unset on the instance: read them with getattr)
    items = [{name: getattr(e, name, default) for name, default in
              (("type", None), ("data", None), ("schema", 1), ("id", None), ("meta", {}), ("clock", {}))}
             for e in data.events]
    return await append_checked(gw, p, tenant, stream.lstrip("/"), items, data.expected_version,
                                idempotency_key(request), correlation_id=request.state.get("correlation_id"),
                                via="rest")


async def append_checked(gw, p, tenant: str, stream: str, items: list[dict], expected_version: int | None,
                         key: str | None, *, correlation_id: str | None, via: str) -> dict:
    """Append ``items`` (event dicts: type, data, schema, id, meta, clock) to ``stream`` after
    every check a client write gets, and answer once the append is committed: positions,
    versions, event ids, ``duplicate`` (an idempotency key seen before: the first result).
    REST (``POST /v1/streams/...``) and the native WebSocket's ``publish`` both write here."""
    stream = check_stream(stream)
    ev = expected_version
    if ev is not None and (type(ev) is not int or not 0 <= ev <= VERSION_MAX):
        raise ValidationError(f"expected_version is 0..{VERSION_MAX}", field="expected_version")
    if is_system_stream(stream):
        raise Forbidden("system streams are written by the server only", stream=stream)
    check_stream_write(p, stream)  # (token scopes)
    if is_dm_stream(stream):
        raise Forbidden("inboxes are written through the native protocol's dm message", stream=stream)
    if stream.startswith("rec/"):
        # Raw record.patched events would skip reconcile and its clock checks.
        raise Forbidden("records are written through ops: POST /v1/ops", stream=stream, reason="records_via_ops")
    for it in items:
        if _is_critical(gw, it["type"]):
            raise CriticalCommandRefused(
                f"{it['type']!r} is a critical command type: POST /v1/commands/{it['type']}", type=it["type"]
            )
    s_ = gw.settings
    now_ms = int(gw.clock.time() * 1000)
    for it in items:
        check_event_clock(it["clock"], now_ms=now_ms, max_skew_ms=s_.max_clock_skew_ms,
                          max_counter=s_.max_clock_counter, max_entries=s_.max_clock_entries)
    for it in items:
        it["data"] = from_jsonable(it["data"])
    doc_updates = _doc_updates(stream, items)  # validates doc/ streams' crdt.update payloads (raises ValidationError)
    if doc_updates:  # the tenant's document quota (api/quota.py): 413 doc_quota_exceeded
        await gw.quota.check(tenant, sum(len(u) for u in doc_updates))
    events = new_events(items, p, correlation_id=correlation_id)
    result = await gw.store.append_many(
        tenant, [StreamWrite(stream, tuple(events), expected_version)], idempotency_key=key
    )
    gw.metrics.events_appended.labels(via).inc(len(events))
    s = result.streams[0]
    # (Document updates reach loaded rooms, here and on every other gateway, through the
    # log followers: the same path as any other writer's.)
    return {
        "stream": s.stream,
        "first_version": s.first_version,
        "last_version": s.last_version,
        "first_position": s.first_position,
        "last_position": s.last_position,
        "event_ids": list(result.event_ids),
        "duplicate": result.duplicate,
    }


@get("/streams/{stream:path}", opt={"perm": READ}, summary="Read one stream from a version")
async def read_stream(
    request: Request,
    stream: str,
    from_version: int = Parameter(default=1, ge=1, le=VERSION_MAX),
    limit: int = Parameter(default=100, ge=1, le=LIMIT_MAX),
) -> dict:
    gw = gateway_of(request)
    stream = check_stream(stream.lstrip("/"))
    check_stream_access(principal_of(request), stream)
    tenant = await read_scope(request, resource=f"stream:{stream}")
    events = await gw.store.read_stream(tenant, stream, from_version=from_version, limit=limit + 1)
    more = len(events) > limit
    events = events[:limit]
    return {
        "stream": stream,
        "events": events_wire(events),
        "next_version": (events[-1].version + 1) if events else from_version,
        "more": more,
    }


def _filter_from_query(stream: list[str] | None, prefix: list[str] | None, type_: list[str] | None, p):
    for s in stream or ():
        check_stream(s)
    for t in type_ or ():
        if not t or len(t) > 200 or glob_to_like(t) is None and any(c in t for c in "[]"):
            raise ValidationError(f"bad type pattern {t!r}")
    streams_ = tuple(stream or ())
    prefixes = tuple(prefix or ())
    access.check_selection(p, streams_, prefixes)  # what is not named explicitly is filtered after the read
    return build_filter(streams_, prefixes, tuple(type_ or ()))


async def _read_log(request: Request, after: int, limit: int, stream, prefix, type_) -> tuple[Any, Any]:
    gw = gateway_of(request)
    p = principal_of(request)
    f = _filter_from_query(stream, prefix, type_, p)
    tenant = await read_scope(request, resource="log")
    page = await gw.store.read_log(tenant, after=after, limit=limit, filter=f)
    # Every filter, none included: system streams, others' inboxes and out-of-scope
    # streams are left out of every page (engine/access.py).
    return page, visible_events(p, page.events, request)


@get("/log", opt={"perm": READ}, summary="Read the tenant's log after a position, with filters and paging")
async def read_log(
    request: Request,
    after: int = Parameter(default=0, ge=0, le=POSITION_MAX),
    limit: int = Parameter(default=100, ge=1, le=LIMIT_MAX),
    stream: list[str] | None = Parameter(default=None, description="exact stream names"),
    prefix: list[str] | None = Parameter(default=None, description="stream prefixes, e.g. doc/"),
    type_: list[str] | None = Parameter(default=None, query="type", description="type globs, e.g. order.*"),
) -> dict:
    page, events = await _read_log(request, after, limit, stream, prefix, type_)
    return {"events": events_wire(events), "next_after": page.next_after, "head": page.head,
            "more": page.next_after < page.head}


@get("/deltas", opt={"perm": READ}, summary="Everything after a position for a set of streams")
async def deltas(
    request: Request,
    after: int = Parameter(default=0, ge=0, le=POSITION_MAX),
    limit: int = Parameter(default=LIMIT_MAX, ge=1, le=LIMIT_MAX),
    stream: list[str] | None = Parameter(default=None),
    prefix: list[str] | None = Parameter(default=None),
) -> dict:
    page, events = await _read_log(request, after, limit, stream, prefix, None)
    return {"events": events_wire(events), "position": page.next_after, "head": page.head,
            "complete": page.next_after >= page.head}


async def _poll(request: Request, after: int, limit: int) -> dict:
    gw = gateway_of(request)
    page, events = await _read_log(request, after, limit, None, None, None)
    has_more = page.next_after < page.head
    s = gw.settings
    interval = suggest_poll_interval(page.events, has_more=has_more, now_us=time.time_ns() // 1000, limit=limit,
                                     min_s=s.poll_min_s, max_s=s.poll_max_s)
    if events:
        gw.metrics.events_delivered.labels("poll").inc(len(events))
        # (each event's meta carries its writer's traceparent; the poll is a span of their traces)
        for sp in delivery_spans(events, "poll.deliver", {"syncline.route": "poll"}):
            sp.end()
    return {"events": events_wire(events), "next": page.next_after, "head": page.head, "more": has_more,
            "poll_interval_s": interval}


@get("/events/poll", opt={"perm": READ}, summary="Polling fallback: a batch, the next cursor, a suggested interval")
async def poll_v1(
    request: Request,
    after: int = Parameter(default=0, ge=0, le=POSITION_MAX),
    limit: int = Parameter(default=100, ge=1, le=LIMIT_MAX),
) -> dict:
    return await _poll(request, after, limit)


@get("/events/poll", opt={"perm": READ}, summary="Polling fallback (the seed's path; same as /v1/events/poll)")
async def poll_legacy(
    request: Request,
    after: int = Parameter(default=0, ge=0, le=POSITION_MAX),
    limit: int = Parameter(default=100, ge=1, le=LIMIT_MAX),
) -> dict:
    return await _poll(request, after, limit)


V1 = [append_events, read_stream, read_log, deltas, poll_v1]
LEGACY = [poll_legacy]
