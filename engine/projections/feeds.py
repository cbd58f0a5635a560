"""Activity feeds: what happened, per user and per room, newest first, paginated."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from ..events import RecordedEvent
from . import Projection


class FeedItem(NamedTuple):
    """Immutable. A NamedTuple of ints and strings: the garbage collector stops tracking
    it after its first look, so the feeds (up to ``keep`` items per user and per room)
    are not rescanned by every full collection (a frozen dataclass is tracked forever)."""

    position: int
    time_us: int
    type: str
    stream: str
    user: str


@dataclass(slots=True)
class FeedsState:
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
    item = FeedItem(e.position, e.time_us, e.type, e.stream, e.actor.user)
    if e.actor.user:
        _push(state.by_user, (e.tenant, e.actor.user), item, state.keep)
    room = room_of(e.stream)
    if room is not None:
        _push(state.by_room, (e.tenant, room), item, state.keep)
    return state


# One item per event on a rebuild: built by tuple.__new__ directly, without the Python
# frame of the NamedTuple's generated __new__.
_tuple_new = tuple.__new__


def apply_feed_events(state: FeedsState, events: Sequence[RecordedEvent]) -> FeedsState:
    """``apply_feed_event`` over a page, in one loop (the same result)."""
    keep, by_user, by_room = state.keep, state.by_user, state.by_room
    for e in events:
        stream = e.stream
        if stream[:1] == "$":
            continue
        user = e.actor.user
        item = _tuple_new(FeedItem, (e.position, e.time_us, e.type, stream, user))
        if user:
            key = (e.tenant, user)
            feed = by_user.get(key)
            if feed is None:
                feed = by_user[key] = deque(maxlen=keep)
            feed.append(item)
        if stream.startswith("room/"):
            key = (e.tenant, stream.split("/", 2)[1])
            feed = by_room.get(key)
            if feed is None:
                feed = by_room[key] = deque(maxlen=keep)
            feed.append(item)
    return state


def _push(feeds: dict, key: tuple[str, str], item: FeedItem, keep: int) -> None:
    feed = feeds.get(key)
    if feed is None:
        feed = feeds[key] = deque(maxlen=keep)
    feed.append(item)


def page(feed: deque | None, *, before: int | None = None, limit: int = 50) -> tuple[list[FeedItem], int | None]:
    """Newest first. Returns (items, cursor): pass the cursor as ``before`` for the next page."""
    if not feed:
        return [], None
    out: list[FeedItem] = []
    for item in reversed(feed):
        if before is not None and item.position >= before:
            continue
        out.append(item)
        if len(out) == limit:
            break
    cursor = out[-1].position if len(out) == limit else None
    return out, cursor


def feeds_projection(keep: int = 1000) -> Projection[FeedsState]:
    return Projection("feeds", lambda: FeedsState(keep), apply_feed_event, apply_many=apply_feed_events)
