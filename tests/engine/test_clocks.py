"""Laws of vector clocks and hybrid logical clocks (engine/clocks.py)."""
from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from syncline.engine.clocks import (
    HLC,
    LOGICAL_MAX,
    WALL_MS_MAX,
    ClockDriftError,
    HLCTimestamp,
    InvalidClock,
    Ordering,
    VectorClock,
    hlc_receive,
    hlc_send,
)

nodes = st.sampled_from(["a", "b", "c", "d", "node-é"])
clocks = st.dictionaries(nodes, st.integers(0, 6), max_size=5).map(VectorClock)
walls = st.integers(0, WALL_MS_MAX)
stamps = st.builds(
    HLCTimestamp,
    walls,
    st.integers(0, LOGICAL_MAX),
    st.text(min_size=1, max_size=12).filter(lambda s: len(s.encode()) <= 256),
)

INVERSE = {
    Ordering.BEFORE: Ordering.AFTER,
    Ordering.AFTER: Ordering.BEFORE,
    Ordering.EQUAL: Ordering.EQUAL,
    Ordering.CONCURRENT: Ordering.CONCURRENT,
}


def reference_compare(a: VectorClock, b: VectorClock) -> Ordering:
    keys = set(a) | set(b)
    le = all(a[k] <= b[k] for k in keys)
    ge = all(a[k] >= b[k] for k in keys)
    if le and ge:
        return Ordering.EQUAL
    if le:
        return Ordering.BEFORE
    if ge:
        return Ordering.AFTER
    return Ordering.CONCURRENT


# ---------------------------------------------------------------- vector clocks


@given(clocks, clocks)
def test_compare_is_antisymmetric_and_matches_the_pointwise_definition(a, b):
    assert a.compare(b) is INVERSE[b.compare(a)]
    assert a.compare(b) is reference_compare(a, b)
    assert (a <= b) == (a.compare(b) in (Ordering.BEFORE, Ordering.EQUAL))
    assert (a < b) == (a.compare(b) is Ordering.BEFORE)


@given(clocks)
def test_compare_with_itself_is_equal(a):
    assert a.compare(a) is Ordering.EQUAL
    assert not a < a


@given(clocks, clocks)
def test_merge_is_commutative_and_an_upper_bound(a, b):
    m = a.merge(b)
    assert m == b.merge(a)
    assert a <= m and b <= m


@given(clocks, clocks, clocks)
def test_merge_is_associative_and_least(a, b, c):
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    if a <= c and b <= c:
        assert a.merge(b) <= c


@given(clocks)
def test_merge_is_idempotent(a):
    assert a.merge(a) == a


@given(clocks, nodes)
def test_increment_moves_one_node_forward(a, node):
    b = a.increment(node)
    assert a.compare(b) is Ordering.BEFORE
    assert b[node] == a[node] + 1
    assert all(b[k] == a[k] for k in set(a) | set(b) if k != node)


@given(clocks)
def test_encodings_round_trip_and_are_canonical(a):
    assert VectorClock.from_bytes(a.to_bytes()) == a
    assert VectorClock.from_dict(a.to_dict()) == a
    # the same clock built in another insertion order encodes to the same bytes
    again = VectorClock(dict(reversed(list(a.to_dict().items()))))
    assert again.to_bytes() == a.to_bytes() and hash(again) == hash(a)


def test_zero_counters_are_not_stored():
    assert VectorClock({"a": 0, "b": 2}) == VectorClock({"b": 2})
    assert len(VectorClock({"a": 0})) == 0


@given(st.binary(max_size=64))
def test_from_bytes_decodes_or_raises_invalid_clock(raw):
    try:
        vc = VectorClock.from_bytes(raw)
    except InvalidClock as e:
        assert e.code == "invalid_clock"
    else:
        assert vc.to_bytes() == raw  # only canonical bytes decode


@pytest.mark.parametrize("bad", [{"a": -1}, {"a": 1.5}, {"": 1}, {1: 1}, {"a": True}])
def test_invalid_entries_are_refused(bad):
    with pytest.raises(InvalidClock):
        VectorClock.from_dict(bad)


def test_vector_clock_is_immutable():
    vc = VectorClock({"a": 1})
    with pytest.raises(AttributeError):
        vc._c = {}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        vc.x = 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- HLC timestamps


@given(stamps)
def test_hlc_encodings_round_trip(ts):
    assert HLCTimestamp.decode(ts.encode()) == ts
    assert HLCTimestamp.from_bytes(ts.to_bytes()) == ts


@given(stamps, stamps)
def test_hlc_encodings_sort_like_timestamps(a, b):
    assume(a != b)
    assert (a < b) == (a.encode() < b.encode())
    assert (a < b) == (a.to_bytes() < b.to_bytes())


@given(st.text(max_size=40))
def test_hlc_decode_of_any_text_is_a_timestamp_or_invalid_clock(text):
    try:
        ts = HLCTimestamp.decode(text)
    except InvalidClock:
        return
    assert ts.encode() == text


@given(st.binary(max_size=40))
def test_hlc_from_bytes_of_any_bytes_is_a_timestamp_or_invalid_clock(raw):
    try:
        ts = HLCTimestamp.from_bytes(raw)
    except InvalidClock:
        return
    assert ts.to_bytes() == raw


# An action is ("now", physical) or ("recv", physical, remote timestamp).
actions = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.integers(-5, 2_000)),
        st.tuples(
            st.just("recv"),
            st.integers(-5, 2_000),
            st.builds(HLCTimestamp, st.integers(0, 2_000), st.integers(0, 5), st.sampled_from("xyz")),
        ),
    ),
    min_size=1,
    max_size=60,
)


@given(actions)
def test_hlc_is_strictly_monotonic_whatever_the_physical_clock_does(steps):
    reading = [0]
    clock = HLC("n", lambda: reading[0])
    prev = None
    for step in steps:
        reading[0] = step[1]
        if step[0] == "now":
            ts = clock.now()
            assert ts.wall_ms >= max(step[1], 0)  # never behind the physical clock
        else:
            ts = clock.receive(step[2])
            assert ts > step[2]  # after what it received: causality is kept
        assert prev is None or ts > prev
        assert ts.node == "n"
        prev = ts
    assert clock.last == prev


def test_hlc_logical_overflow_carries_into_wall_time():
    last = HLCTimestamp(100, LOGICAL_MAX, "n")
    assert hlc_send(last, 50, "n") == HLCTimestamp(101, 0, "n")
    remote = HLCTimestamp(100, LOGICAL_MAX, "m")
    assert hlc_receive(None, remote, 0, "n") == HLCTimestamp(101, 0, "n")


def test_hlc_receive_refuses_remote_clocks_too_far_ahead_and_keeps_its_state():
    clock = HLC("n", lambda: 1_000, max_drift_ms=100)
    first = clock.now()
    with pytest.raises(ClockDriftError) as e:
        clock.receive(HLCTimestamp(1_200, 0, "m"))
    assert e.value.code == "clock_drift"
    assert clock.last == first
    assert clock.receive(HLCTimestamp(1_050, 3, "m")) == HLCTimestamp(1_050, 4, "n")
