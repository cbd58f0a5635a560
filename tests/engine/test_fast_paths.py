"""The fast paths agree with the plain definitions they replace.

- ``VectorClock.from_dict`` and ``HLCTimestamp.decode`` (fast paths for our own
  encodings) accept and reject exactly what the general constructors do;
- merges that leave nodes out of order still read, compare and encode canonically;
- ``ClockMerger`` gives the same clock as a chain of ``merge``;
- the batch folds of the feeds and stats projections equal their per-event folds.
"""
from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.clocks import EMPTY_CLOCK, ClockMerger, HLCTimestamp, InvalidClock, VectorClock
from syncline.engine.events import Actor, RecordedEvent, Retention
from syncline.engine.projections.feeds import FeedsState, apply_feed_event, apply_feed_events
from syncline.engine.projections.stats import apply_stats_event, apply_stats_events

NODES = st.sampled_from(["a", "b", "c", "d", "e", "f", "zz", "é", "client-10", "client-9"])
CLOCKS = st.dictionaries(NODES, st.integers(1, 50), max_size=6).map(VectorClock)


def _general_from_dict(data):
    try:
        return VectorClock(data)
    except InvalidClock:
        return "invalid"


def _fast_from_dict(data):
    try:
        return VectorClock.from_dict(data)
    except InvalidClock:
        return "invalid"


@given(st.dictionaries(st.one_of(NODES, st.just(""), st.integers(0, 3)),
                       st.one_of(st.integers(-2, 2**64), st.booleans(), st.floats()), max_size=5))
def test_from_dict_fast_path_matches_constructor(data):
    assert _fast_from_dict(data) == _general_from_dict(data)
    if len(data) > 1:  # key order must not matter either
        rev = dict(reversed(list(data.items())))
        assert _fast_from_dict(rev) == _general_from_dict(data)


def _checked_decode(text):
    # The definition before the fast path: slices, hex digits, then ``checked``.
    if not isinstance(text, str) or len(text) < 23 or text[12] != "-" or text[21] != "-":
        return "invalid"
    wall, logical, node = text[:12], text[13:21], text[22:]
    hexd = set("0123456789abcdef")
    if not (set(wall) <= hexd and set(logical) <= hexd) or not node:
        return "invalid"
    try:
        return HLCTimestamp.checked(int(wall, 16), int(logical, 16), node)
    except InvalidClock:
        return "invalid"


def _decode(text):
    try:
        return HLCTimestamp.decode(text)
    except InvalidClock:
        return "invalid"


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=300))
def test_hlc_decode_round_trips_and_matches_checked(wall, logical, node):
    text = HLCTimestamp(wall, logical, node).encode()
    try:
        node.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: both paths raise UnicodeEncodeError
    assert _decode(text) == _checked_decode(text)


@given(st.text(max_size=40))
def test_hlc_decode_rejects_like_before(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert _decode(text) == _checked_decode(text)
    assert _decode("018bcfe56800-00000001-" + text) == _checked_decode("018bcfe56800-00000001-" + text)


@given(st.lists(CLOCKS, max_size=8), CLOCKS)
def test_clock_merger_equals_merge_chain_and_stays_canonical(clocks, base):
    merger = ClockMerger(base)
    expected = base
    for c in clocks:
        merger.add(c)
        expected = expected.merge(c)
    got = merger.result()
    assert got == expected and hash(got) == hash(expected)
    for vc in (got, expected):
        assert list(vc) == sorted(vc) and [n for n, _ in vc.items()] == sorted(vc)
        assert list(vc.to_dict()) == sorted(vc)
        assert VectorClock.from_bytes(vc.to_bytes()) == vc
        assert vc.increment("b").get("b") == vc.get("b") + 1
        assert list(vc.increment("b")) == sorted(vc.increment("b"))
    assert merger.result() is got  # a finished merger keeps its answer


@given(CLOCKS, CLOCKS, CLOCKS)
def test_unsorted_merges_compare_like_sorted_ones(a, b, c):
    m = a.merge(b).merge(c)
    canon = VectorClock(dict(m.to_dict()))
    assert m == canon
    for other in (a, b, c, EMPTY_CLOCK, canon):
        assert m.compare(other) is canon.compare(other)
        assert other.compare(m) is other.compare(canon)
        assert (m <= other) == (canon <= other) and (other < m) == (other < canon)


STREAMS = st.sampled_from(["room/r1", "room/r2/chat", "order/1", "$conflicts", "doc/x", "rec/t/1"])
EVENTS = st.lists(st.tuples(st.sampled_from(["t1", "t2"]), STREAMS, st.sampled_from(["", "u1", "u2"]),
                            st.sampled_from(["a.b", "presence.joined"])), max_size=40)


def _events(spec):
    return [RecordedEvent(f"e{i}", tenant, stream, i, i, type_, 1, 1000 * i, Actor(user, "c"), {}, {}, {},
                          Retention.STANDARD)
            for i, (tenant, stream, user, type_) in enumerate(spec, 1)]


@given(EVENTS, st.integers(1, 5))
def test_batch_folds_equal_per_event_folds(spec, keep):
    events = _events(spec)
    one, many = FeedsState(keep), FeedsState(keep)
    for e in events:
        one = apply_feed_event(one, e)
    many = apply_feed_events(many, events)
    as_lists = lambda d: {k: (list(v), v.maxlen) for k, v in d.items()}  # noqa: E731
    assert as_lists(one.by_user) == as_lists(many.by_user)
    assert as_lists(one.by_room) == as_lists(many.by_room)
    assert all(isinstance(v, deque) for v in many.by_user.values())
    s1: dict = {}
    for e in events:
        s1 = apply_stats_event(s1, e)
    assert apply_stats_events({}, events) == s1
