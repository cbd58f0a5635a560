"""Activity feeds: what happened, per user and per room, newest first, paginated."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

from ..events import RecordedEvent
from . import Projection


class FeedItem(NamedTuple):
    """One activity item, as ``page`` returns it."""

    position: int
    time_us: int
    type: str
    stream: str
    user: str


@dataclass(slots=True)
class FeedsState:
    """Per (tenant, user) and per (tenant, room), the last ``keep`` items, oldest first.

    The deques hold plain ``(position, time_us, type, stream, user)`` tuples, FeedItem's
    fields: the garbage collector stops tracking a plain tuple of ints and strings after
    its first look (not a tuple subclass), and the feeds are most of what a rebuild keeps,
    so every full collection would rescan them all. ``page`` returns FeedItems."""

    keep: int
    by_user: dict[tuple[str, str], deque] = field(default_factory=dict)
    by_room: dict[tuple[str, str], deque] = field(default_factory=dict)


def room_of(stream: str) -> str | None:
    """``room/<id>`` and ``room/<id>/...`` streams belong to room ``<id>``."""
    if stream.startswith("room/"):
        return stream.split("/", 2)[1]
    return None


def apply_feed_event(state: FeedsState, e: RecordedEvent) -> FeedsState:
    if e.stream.startswith("$"):  # system streams are not activity
        return state
    item = (e.position, e.time_us, e.type, e.stream, e.actor.user)
    if e.actor.user:
        _push(state.by_user, (e.tenant, e.actor.user), item, state.keep)
    room = room_of(e.stream)
    if room is not None:
        _push(state.by_room, (e.tenant, room), item, state.keep)
    return state


def apply_feed_events(state: FeedsState, events: Sequence[RecordedEvent]) -> FeedsState:
    """``apply_feed_event`` over a page, in one loop (the same result). An actor's events
    often come in runs (an append is consecutive in the log, and the store shares one
    Actor object per user and client): the user's feed is looked up once per run."""
    keep, by_user, by_room = state.keep, state.by_user, state.by_room
    actor = tenant = user_feed = None
    for e in events:
        stream = e.stream
        first = stream[:1]
        if first == "$":
            continue
        if e.actor is not actor or e.tenant != tenant:
            actor, tenant = e.actor, e.tenant
            user = actor.user
            if user:
                key = (tenant, user)
                user_feed = by_user.get(key)
                if user_feed is None:
                    user_feed = by_user[key] = deque(maxlen=keep)
            else:
                user_feed = None
        item = (e.position, e.time_us, e.type, stream, actor.user)
        if user_feed is not None:
            user_feed.append(item)
        if first == "r" and stream.startswith("room/"):
            key = (tenant, stream.split("/", 2)[1])
            feed = by_room.get(key)
            if feed is None:
                feed = by_room[key] = deque(maxlen=keep)
            feed.append(item)
    return state


def _push(feeds: dict, key: tuple[str, str], item: tuple, keep: int) -> None:
    feed = feeds.get(key)
    if feed is None:
        feed = feeds[key] = deque(maxlen=keep)
    feed.append(item)


def page(
    feed: deque | None, *, before: int | None = None, limit: int = 50, make: Callable[[tuple], Any] = FeedItem._make,
) -> tuple[list, int | None]:
    """Newest first, as ``make(item)`` (FeedItems by default; any kept history whose items
    start with their position pages the same way). Returns (items, cursor): pass the
    cursor as ``before`` for the next page."""
    if not feed:
        return [], None
    out: list = []
    for item in reversed(feed):
        if before is not None and item[0] >= before:
            continue
        out.append(make(item))
        if len(out) == limit:
            break
    cursor = out[-1][0] if len(out) == limit else None
    return out, cursor


def feeds_projection(keep: int = 1000) -> Projection[FeedsState]:
    return Projection("feeds", lambda: FeedsState(keep), apply_feed_event, apply_many=apply_feed_events)
