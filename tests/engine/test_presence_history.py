"""Presence history: joins and leaves per room, who is there now, the kept history."""
from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.engine.events import NO_ACTOR, Actor, RecordedEvent, Retention
from syncline.engine.projections.presence import PresenceChange, changes, presence_projection


def _event(position: int, type_: str, stream: str = "room/r1", user: str = "", data=None, tenant="t1"):
    return RecordedEvent(
        id=f"e{position}", tenant=tenant, stream=stream, version=position, position=position, type=type_,
        schema=1, time_us=10 * position, actor=Actor(user) if user else NO_ACTOR, clock={},
        data=data if data is not None else {}, meta={}, retention=Retention.STANDARD,
    )


def test_joins_and_leaves_give_who_is_there_and_the_history_in_order():
    p = presence_projection(keep=3)
    events = [
        _event(1, "presence.joined", user="ann"),
        _event(2, "presence.joined", user="ann"),  # a second tab
        _event(3, "presence.joined", data={"user": "bob"}),  # no actor: the user from the payload
        _event(4, "presence.left", user="ann"),
        _event(5, "presence.joined", stream="doc/x", user="eve"),  # not a room
        _event(6, "order.updated", user="eve"),  # not presence
        _event(7, "presence.left", user="bob"),
        _event(8, "presence.joined", user="cy", tenant="t2"),
    ]
    s = p.fold(events)
    assert s.present[("t1", "r1")] == {"ann": 1}
    assert s.present[("t2", "r1")] == {"cy": 1}
    kept = changes(s, "t1", "r1")
    assert kept == [
        PresenceChange(3, 30, "bob", "joined"),
        PresenceChange(4, 40, "ann", "left"),
        PresenceChange(7, 70, "bob", "left"),
    ]
    assert all(type(c) is PresenceChange for c in kept)
    assert changes(s, "t1", "nowhere") == []


def test_history_items_are_left_alone_by_the_garbage_collector():
    s = presence_projection().fold([_event(1, "presence.joined", user="ann")])
    gc.collect()
    assert not gc.is_tracked(s.history[("t1", "r1")][0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["presence.joined", "presence.left"]), st.sampled_from("abc"),
                          st.sampled_from(["room/r1", "room/r2"])), max_size=30),
       st.lists(st.integers(0, 30), max_size=4))
def test_a_page_fold_equals_one_event_at_a_time(steps, cuts):
    events = [_event(i + 1, t, stream, user) for i, (t, user, stream) in enumerate(steps)]
    p = presence_projection(keep=5)
    one = p.initial()
    for e in events:
        one = p.apply(one, e)
    paged = p.initial()
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(events)]):
        paged = p.fold(events[a:b], paged)
    assert one.present == paged.present
    assert {k: list(v) for k, v in one.history.items()} == {k: list(v) for k, v in paged.history.items()}
