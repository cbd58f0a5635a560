"""Presence history: who joined and left which room, and who is there now.

Live presence (typing, cursors, heartbeats) is ephemeral and never logged; joins and
leaves are, as ``presence.joined`` / ``presence.left`` on ``room/<id>`` streams.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from ..events import RecordedEvent
from ..filters import EventFilter
from . import Projection

JOINED = "presence.joined"
LEFT = "presence.left"


class PresenceChange(NamedTuple):
    """One join or leave, as ``changes`` returns it."""

    position: int
    time_us: int
    user: str
    kind: str  # "joined" | "left"


@dataclass(slots=True)
class PresenceState:
    """Per (tenant, room): the last ``keep`` joins and leaves, oldest first, and who is
    there now with their count of open joins.

    The history holds plain ``(position, time_us, user, kind)`` tuples, PresenceChange's
    fields: the garbage collector stops tracking a plain tuple of ints and strings after
    its first look, not a tuple subclass (see ``feeds.FeedsState``). ``changes`` returns
    PresenceChanges."""

    keep: int
    history: dict[tuple[str, str], deque] = field(default_factory=dict)
    present: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # user -> open joins


def apply_presence_event(state: PresenceState, e: RecordedEvent) -> PresenceState:
    return apply_presence_events(state, (e,))


def apply_presence_events(state: PresenceState, events: Sequence[RecordedEvent]) -> PresenceState:
    """Joins and leaves of ``room/<id>`` streams (see ``feeds.room_of``) over a page, in one loop."""
    keep, history, present = state.keep, state.history, state.present
    for e in events:
        stream, type_ = e.stream, e.type
        if not stream.startswith("room/") or (type_ != JOINED and type_ != LEFT):
            continue
        user = e.actor.user
        if not user:
            data = e.data
            user = data.get("user", "") if isinstance(data, dict) else ""
        key = (e.tenant, stream.split("/", 2)[1])
        hist = history.get(key)
        if hist is None:
            hist = history[key] = deque(maxlen=keep)
        joined = type_ == JOINED
        hist.append((e.position, e.time_us, user, "joined" if joined else "left"))
        here = present.get(key)
        if here is None:
            here = present[key] = {}
        if joined:
            here[user] = here.get(user, 0) + 1
        elif here.get(user, 0) > 1:
            here[user] -= 1
        else:
            here.pop(user, None)
    return state


def changes(state: PresenceState, tenant: str, room: str) -> list[PresenceChange]:
    """The room's kept joins and leaves, oldest first."""
    return [PresenceChange._make(c) for c in state.history.get((tenant, room), ())]


def presence_projection(keep: int = 1000) -> Projection[PresenceState]:
    return Projection(
        "presence",
        lambda: PresenceState(keep),
        apply_presence_event,
        EventFilter(stream_prefixes=("room/",), types=(JOINED, LEFT)),
        apply_presence_events,
    )
