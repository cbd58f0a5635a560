"""REST views of the gateway's in-memory projections (api/activity.py): activity feeds
per user and per room, a room's presence history, and per-stream statistics.

Every answer carries ``position`` (every event up to it is folded in) and ``caught_up``
(false while the gateway is still folding the log after a start or a database outage).
Feeds and histories are newest first; pass ``next_before`` back as ``before`` for the
next page. Any token with ``read`` in the tenant may read any of its users' feeds; the
items are filtered by the access rule (engine/access.py): another user's inbox and
streams outside a scoped token's scopes are left out, and a room's views need read
access to ``room/<room>``."""
from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import Parameter

from syncline.engine import access
from syncline.engine.errors import NotFound, ValidationError
from syncline.engine.events import POSITION_MAX, check_stream
from syncline.engine.projections.feeds import page as feed_page
from syncline.engine.projections.presence import PresenceChange
from syncline.engine.session import NAME_RE as ROOM_RE

from .activity import ActivityProjections
from .auth import READ
from .deps import check_stream_access, gateway_of, principal_of, read_scope

PAGE_MAX = 500
USER_MAX = 200


def _projections(request: Request) -> ActivityProjections:
    return gateway_of(request).activity


def _freshness(a: ActivityProjections) -> dict[str, Any]:
    return {"position": a.position, "caught_up": a.caught_up}


def _room(room: str) -> str:
    if not ROOM_RE.match(room):
        raise ValidationError("invalid room name", reason="invalid_room")
    return room


def _feed_answer(request: Request, a: ActivityProjections, feed: Any, before: int | None, limit: int) -> dict:
    items, cursor = feed_page(feed, before=before, limit=limit)
    shown = access.visible(principal_of(request), items)
    if len(shown) != len(items):
        gateway_of(request).metrics.access_hidden.labels("feed").inc(len(items) - len(shown))
    return {"items": [i._asdict() for i in shown], "next_before": cursor, **_freshness(a)}


@get("/feeds/users/{user:str}", opt={"perm": READ}, summary="A user's activity feed, newest first")
async def user_feed(
    request: Request,
    user: str,
    before: int | None = Parameter(default=None, ge=1, le=POSITION_MAX, description="only items before this position"),
    limit: int = Parameter(default=50, ge=1, le=PAGE_MAX),
) -> dict:
    if not user or len(user) > USER_MAX:
        raise ValidationError(f"a user name is 1-{USER_MAX} characters", reason="invalid_user")
    tenant = await read_scope(request, resource=f"feed:user:{user}")
    a = _projections(request)
    return {"user": user, **_feed_answer(request, a, a.feeds().by_user.get((tenant, user)), before, limit)}


@get("/feeds/rooms/{room:str}", opt={"perm": READ}, summary="A room's activity feed, newest first")
async def room_feed(
    request: Request,
    room: str,
    before: int | None = Parameter(default=None, ge=1, le=POSITION_MAX, description="only items before this position"),
    limit: int = Parameter(default=50, ge=1, le=PAGE_MAX),
) -> dict:
    room = _room(room)
    check_stream_access(principal_of(request), f"room/{room}")  # (token scopes)
    tenant = await read_scope(request, resource=f"feed:room:{room}")
    a = _projections(request)
    return {"room": room, **_feed_answer(request, a, a.feeds().by_room.get((tenant, room)), before, limit)}


@get("/rooms/{room:str}/history", opt={"perm": READ}, summary="A room's joins and leaves, newest first")
async def room_history(
    request: Request,
    room: str,
    before: int | None = Parameter(default=None, ge=1, le=POSITION_MAX,
                                   description="only changes before this position"),
    limit: int = Parameter(default=50, ge=1, le=PAGE_MAX),
) -> dict:
    room = _room(room)
    check_stream_access(principal_of(request), f"room/{room}")  # (token scopes)
    tenant = await read_scope(request, resource=f"room:{room}:history")
    a = _projections(request)
    state = a.presence()
    changes, cursor = feed_page(state.history.get((tenant, room)), before=before, limit=limit,
                                make=PresenceChange._make)
    present = state.present.get((tenant, room), {})
    return {"room": room, "changes": [c._asdict() for c in changes], "next_before": cursor,
            "present": sorted(present), **_freshness(a)}


@get("/stats/streams/{stream:path}", opt={"perm": READ}, summary="One stream's statistics")
async def stream_stats(request: Request, stream: str) -> dict:
    stream = check_stream(stream.lstrip("/"))
    check_stream_access(principal_of(request), stream)
    tenant = await read_scope(request, resource=f"stats:{stream}")
    a = _projections(request)
    st = a.stream_stat(tenant, stream)
    if st is None:
        raise NotFound("no events of this stream are folded in yet", stream=stream, **_freshness(a))
    return {"stream": stream, "events": st.events, "version": st.version, "first_position": st.first_position,
            "last_position": st.last_position, "last_time_us": st.last_time_us, "types": dict(st.types),
            **_freshness(a)}


V1 = [user_feed, room_feed, room_history, stream_stats]
