"""``api.wire.events_wire`` builds the wire form itself (the ISO time formatted once per
distinct time): it must stay exactly ``RecordedEvent.to_wire``."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.api.wire import events_wire
from syncline.engine.events import Actor, RecordedEvent, Retention

_events = st.builds(
    RecordedEvent,
    id=st.text(min_size=1, max_size=8), tenant=st.just("acme"), stream=st.just("feed/1"),
    version=st.integers(1, 10**6), position=st.integers(1, 10**9), type=st.just("feed.posted"),
    schema=st.integers(1, 3),
    time_us=st.one_of(st.integers(0, 4_000_000_000_000_000), st.sampled_from([0, 1, 999_999, 1_000_000])),
    actor=st.builds(Actor, st.text(max_size=5), st.text(max_size=5)),
    clock=st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    data=st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    meta=st.dictionaries(st.sampled_from(["trace_id", "op"]), st.text(max_size=4), max_size=2),
    retention=st.sampled_from(list(Retention)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_events, max_size=5))
def test_events_wire_is_to_wire(events):
    assert events_wire(events) == [e.to_wire() for e in events]
