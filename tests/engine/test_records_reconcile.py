"""Record reconciliation, rule by rule: LWW, merge fields, manual conflicts,
duplicates, rejections and the events reconcile emits."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.codec import pack
from syncline.engine.errors import ValidationError
from syncline.engine.events import check_stream, check_type
from syncline.engine.records import (
    CONFLICT_DETECTED,
    CONFLICT_RESOLVED,
    CONFLICTS_STREAM,
    LWW,
    MANUAL,
    RECORD_PATCHED,
    ClientOp,
    CollectionPolicy,
    OutcomeKind,
    RecordsState,
    RejectReason,
    ResolutionConfig,
    ResolveOp,
    as_stream_writes,
    merged,
    op_from_wire,
    reconcile,
)

S = "rec/notes/1"
CFG = ResolutionConfig(
    {
        "notes": CollectionPolicy(
            fields={
                "title": LWW,
                "body": MANUAL,
                "likes": merged("counter"),
                "tags": merged("set_union"),
                "seen": merged("max"),
            }
        ),
        "strict": CollectionPolicy(fields={"a": LWW}, strict=True),
    },
    max_clock_skew_ms=1_000,
    max_op_age_ms=10_000,
)


def op(op_id, client, clock, wall, *, stream=S, logical=0, set=None, delete=(), user=None):
    return ClientOp(
        op_id=op_id,
        client=client,
        user=user or f"user-{client}",
        stream=stream,
        clock=VectorClock(clock),
        hlc=HLCTimestamp(wall, logical, client),
        set=set or {},
        delete=tuple(delete),
    )


def run(ops, state=None, **kw):
    return reconcile(state or RecordsState(), ops, CFG, **kw)


def values(state, stream=S):
    return state.get(stream).values()


# ---------------------------------------------------------------- last writer wins


def test_lww_highest_hlc_wins_in_either_order():
    a = op("a1", "a", {"a": 1}, 200, set={"title": "from a"})
    b = op("b1", "b", {"b": 1}, 100, set={"title": "from b"})
    for order in ([a, b], [b, a]):
        state, _, outcomes = run(order)
        assert values(state) == {"title": "from a"}
        assert outcomes[1].kind is OutcomeKind.MERGED


def test_lww_hlc_tie_is_broken_by_client_id():
    a = op("x1", "alice", {"alice": 1}, 100, set={"title": "alice"})
    b = op("x2", "bob", {"bob": 1}, 100, set={"title": "bob"})
    for order in ([a, b], [b, a]):
        assert values(run(order).state) == {"title": "bob"}


writes = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 2), st.sampled_from("abcd"), st.text(max_size=3)),
    min_size=1,
    max_size=8,
)


@given(writes, st.randoms(use_true_random=False))
def test_lww_is_deterministic_for_any_concurrent_writes_in_any_order(ws, rnd):
    ops = [
        op(f"op{i}", c, {c: i + 1}, wall, logical=lg, set={"title": v})
        for i, (wall, lg, c, v) in enumerate(ws)
    ]
    best = max(range(len(ws)), key=lambda i: (ws[i][0], ws[i][1], ws[i][2], f"op{i}"))
    shuffled = list(ops)
    rnd.shuffle(shuffled)
    state = run(shuffled).state
    assert values(state) == {"title": ws[best][3]}
    f = state.get(S).fields["title"]
    assert f.author.client == ws[best][2] and f.hlc == ops[best].hlc


def test_a_causally_later_write_wins_and_a_late_old_write_is_superseded():
    old = op("o1", "a", {"a": 1}, 100, set={"title": "old"})
    new = op("o2", "b", {"a": 1, "b": 1}, 150, set={"title": "new"})
    state, _, outcomes = run([new, old])
    assert values(state) == {"title": "new"}
    assert outcomes[1].kind is OutcomeKind.APPLIED and outcomes[1].superseded == ("title",)


def test_delete_is_a_tombstone_write():
    s1 = op("d1", "a", {"a": 1}, 100, set={"title": "t", "body": "b"})
    d = op("d2", "a", {"a": 2}, 110, delete=["title", "body"])
    state = run([s1, d]).state
    assert values(state) == {}
    assert state.get(S).fields["title"].deleted
    # the delete is older than a concurrent set: the set wins
    late = op("d3", "b", {"b": 1}, 120, set={"title": "again"})
    assert values(run([late], state).state) == {"title": "again"}


# ---------------------------------------------------------------- field-level merge


@given(
    st.dictionaries(st.sampled_from(["title", "x", "y", "z", "w"]), st.integers(-(1 << 63), (1 << 64) - 1), min_size=1),
    st.randoms(use_true_random=False),
)
def test_disjoint_field_edits_are_never_lost(edits, rnd):
    # one client per field, all concurrent, HLCs deliberately unrelated to the order
    ops = [
        op(f"op-{name}", f"c-{name}", {f"c-{name}": 1}, rnd.randrange(10), set={name: v})
        for name, v in edits.items()
    ]
    rnd.shuffle(ops)
    state, _, outcomes = run(ops)
    assert values(state) == edits
    assert all(o.kind is OutcomeKind.APPLIED for o in outcomes)


def test_only_the_shared_field_goes_to_its_strategy():
    a = op("a1", "a", {"a": 1}, 100, set={"title": "A", "x": 1})
    b = op("b1", "b", {"b": 1}, 90, set={"title": "B", "y": 2})
    state, _, outcomes = run([a, b])
    assert values(state) == {"title": "A", "x": 1, "y": 2}
    assert outcomes[1].kind is OutcomeKind.MERGED and outcomes[1].superseded == ("title",)


def test_merge_fields_combine_concurrent_writes():
    ops = [
        op("m1", "a", {"a": 1}, 100, set={"likes": 2, "tags": ["x"], "seen": 5}),
        op("m2", "b", {"b": 1}, 90, set={"likes": 3, "tags": ["y", "x"], "seen": 9}),
        op("m3", "c", {"c": 1}, 80, set={"likes": -1, "seen": 7.5}),
    ]
    for perm in itertools.permutations(ops):
        state = run(list(perm)).state
        assert values(state) == {"likes": 4, "tags": frozenset({"x", "y"}), "seen": 9}
        assert state.get(S).fields["likes"].author.client == "a"  # greatest HLC describes it


# ---------------------------------------------------------------- manual


def test_manual_conflict_keeps_the_server_value_and_both_versions():
    a = op("a1", "a", {"a": 1}, 100, set={"body": "mine"})
    b = op("b1", "b", {"b": 1}, 120, set={"body": "theirs"})
    state, events, outcomes = run([a, b])
    assert values(state) == {"body": "mine"}  # the value the server held
    assert outcomes[0].kind is OutcomeKind.APPLIED
    assert outcomes[1].kind is OutcomeKind.CONFLICT and len(outcomes[1].conflicts) == 1
    (conflict,) = state.get(S).conflicts()
    assert conflict.id == outcomes[1].conflicts[0]
    assert [(w.value, w.stamp.author.user) for w in conflict.versions] == [
        ("mine", "user-a"),
        ("theirs", "user-b"),
    ]
    detected = [e for e in events if e.event.type == CONFLICT_DETECTED]
    assert len(detected) == 1 and detected[0].stream == CONFLICTS_STREAM
    assert detected[0].event.data["conflict"] == conflict.id
    assert {v["value"] for v in detected[0].event.data["versions"]} == {"mine", "theirs"}


def test_a_resolution_op_decides_the_conflict_and_is_logged():
    a = op("a1", "a", {"a": 1}, 100, set={"body": "mine"})
    b = op("b1", "b", {"b": 1}, 120, set={"body": "theirs"})
    state = run([a, b]).state
    (conflict,) = state.get(S).conflicts()
    resolve = conflict.resolution(op_id="r1", client="c", user="judge", hlc=HLCTimestamp(130, 0, "c"), choice="b1")
    state2, events, outcomes = run([resolve], state)
    assert values(state2) == {"body": "theirs"}
    assert state2.get(S).conflicts() == ()
    assert outcomes[0].kind is OutcomeKind.APPLIED and outcomes[0].resolved == (conflict.id,)
    resolved = [e for e in events if e.event.type == CONFLICT_RESOLVED]
    assert len(resolved) == 1
    assert resolved[0].event.data["conflict"] == conflict.id
    assert resolved[0].event.data["choice"] == "b1" and resolved[0].event.actor.user == "judge"


def test_a_resolution_that_arrives_before_the_conflict_still_settles_it():
    a = op("a1", "a", {"a": 1}, 100, set={"body": "mine"})
    b = op("b1", "b", {"b": 1}, 120, set={"body": "theirs"})
    in_order = run([a, b]).state
    (conflict,) = in_order.get(S).conflicts()
    resolve = conflict.resolution(
        op_id="r1", client="c", user="j", hlc=HLCTimestamp(130, 0, "c"), choice="custom", value="both"
    )
    for perm in itertools.permutations([a, b, resolve]):
        state = run(list(perm)).state
        assert values(state) == {"body": "both"}
        assert state.get(S).conflicts() == ()


def test_a_write_concurrent_with_the_resolution_opens_a_new_conflict():
    a = op("a1", "a", {"a": 1}, 100, set={"body": "A"})
    b = op("b1", "b", {"b": 1}, 120, set={"body": "B"})
    c = op("c1", "d", {"d": 1}, 125, set={"body": "C"})
    (conflict,) = run([a, b]).state.get(S).conflicts()
    resolve = conflict.resolution(op_id="r1", client="j", user="j", hlc=HLCTimestamp(130, 0, "j"), choice="a1")
    finals = set()
    for perm in itertools.permutations([a, b, c, resolve]):
        state = run(list(perm)).state
        (open_conflict,) = state.get(S).conflicts()
        finals.add((open_conflict.id, tuple(w.stamp.op_id for w in open_conflict.versions)))
    assert len(finals) == 1  # one and the same conflict on every order
    assert finals.pop()[1] == ("c1", "r1")


@given(st.integers(2, 6), st.randoms(use_true_random=False))
def test_each_concurrent_write_to_a_manual_field_gives_exactly_one_conflict(k, rnd):
    ops = [op(f"w{i}", f"c{i}", {f"c{i}": 1}, rnd.randrange(5), set={"body": i}) for i in range(k)]
    rnd.shuffle(ops)
    state, events, outcomes = run(ops)
    # the first write to arrive is applied; each later one yields one conflict
    assert outcomes[0].kind is OutcomeKind.APPLIED
    assert all(o.kind is OutcomeKind.CONFLICT and len(o.conflicts) == 1 for o in outcomes[1:])
    detected = [e.event.data for e in events if e.event.type == CONFLICT_DETECTED]
    assert len(detected) == k - 1
    # each detection supersedes the previous one: one open conflict, holding every write
    assert [d["supersedes"] for d in detected[1:]] == [d["conflict"] for d in detected[:-1]]
    (conflict,) = state.get(S).conflicts()
    assert {w.stamp.op_id for w in conflict.versions} == {f"w{i}" for i in range(k)}
    assert conflict.id == detected[-1]["conflict"] == outcomes[-1].conflicts[0]
    # every replica names it the same, whatever the order
    assert run(sorted(ops, key=lambda o: o.op_id)).state.get(S).conflicts()[0].id == conflict.id


def test_sequential_writes_to_a_manual_field_do_not_conflict():
    ops = [op(f"s{i}", "a", {"a": i + 1}, 100 + i, set={"body": i}) for i in range(4)]
    state, events, outcomes = run(ops)
    assert values(state) == {"body": 3}
    assert all(o.kind is OutcomeKind.APPLIED for o in outcomes)
    assert not [e for e in events if e.stream == CONFLICTS_STREAM]


# ---------------------------------------------------------------- duplicates


@given(st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_a_duplicate_op_returns_its_original_outcome_and_changes_nothing(picks):
    base = [
        op("a1", "a", {"a": 1}, 100, set={"body": "A", "likes": 1}),
        op("b1", "b", {"b": 1}, 120, set={"body": "B", "likes": 1}),
        op("c1", "c", {"c": 1}, 90, set={"title": "C"}),
        op("d1", "d", {"d": 1}, 95, set={"title": "D", "tags": [1]}),
        op("e1", "e", {"e": 1}, 95, delete=["title"]),
        op("f1", "f", {"f": 1}, 95, set={"nope/bad": 1}),  # rejected
    ]
    state, events, first = run(base)
    again = [base[i] for i in picks]
    state2, events2, outcomes = run(again, state)
    assert state2 == state and events2 == []
    by_id = {o.op_id: o for o in first}
    for o in outcomes:
        if by_id[o.op_id].kind is OutcomeKind.REJECTED:
            assert o == by_id[o.op_id]  # rejections are judged again, the same way
        else:
            assert o.kind is OutcomeKind.DUPLICATE and o.original == by_id[o.op_id]
            assert o.effective == by_id[o.op_id]


def test_a_duplicate_inside_one_batch_is_detected():
    a = op("a1", "a", {"a": 1}, 100, set={"likes": 5})
    state, events, outcomes = run([a, a, a])
    assert values(state) == {"likes": 5}
    assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED, OutcomeKind.DUPLICATE, OutcomeKind.DUPLICATE]
    assert len(events) == 1


# ---------------------------------------------------------------- rejections


REJECTIONS = [
    (op("r", "a", {"a": 1}, 100, stream="rec/nope/1", set={"x": 1}), RejectReason.UNKNOWN_COLLECTION),
    (op("r", "a", {"a": 1}, 100, stream="doc/1", set={"x": 1}), RejectReason.INVALID_STREAM),
    (op("r", "a", {"a": 1}, 100, stream="rec/notes", set={"x": 1}), RejectReason.INVALID_STREAM),
    (op("r", "a", {"a": 1}, 100, set={"bad name": 1}), RejectReason.INVALID_FIELD),
    (op("r", "a", {"a": 1}, 100, set={"$x": 1}), RejectReason.INVALID_FIELD),
    (op("r", "a", {"a": 1}, 100, stream="rec/strict/1", set={"b": 1}), RejectReason.INVALID_FIELD),
    (op("r", "a", {"a": 1}, 100), RejectReason.EMPTY_OP),
    (op("r", "a", {"a": 1}, 100, set={"x": 1}, delete=["x"]), RejectReason.FIELD_SET_AND_DELETED),
    (op("r", "a", {"b": 1}, 100, set={"x": 1}), RejectReason.INVALID_CLOCK),
    (op("r", "a", {"a": 1}, 100, set={"x": object()}), RejectReason.INVALID_VALUE),
    (op("r", "a", {"a": 1}, 100, set={"x": float("nan")}), RejectReason.INVALID_VALUE),
    (op("r", "a", {"a": 1}, 100, set={"x": {1: 2}}), RejectReason.INVALID_VALUE),
    (op("r", "a", {"a": 1}, 100, set={"likes": 1.5}), RejectReason.INVALID_VALUE),
    (op("r", "a", {"a": 1}, 100, set={"tags": "abc"}), RejectReason.INVALID_VALUE),
    (op("r", "a", {"a": 1}, 100, delete=["likes"]), RejectReason.UNSUPPORTED_DELETE),
    (ClientOp("r", "a", "u", S, VectorClock({"a": 1}), HLCTimestamp(100, 0, "a"),
              delete="title"),  # type: ignore[arg-type]
     RejectReason.INVALID_OP),
    (ResolveOp("r", "a", "u", S, VectorClock({"a": 1}), HLCTimestamp(100, 0, "a"), "cf_x", "title", "custom", 1),
     RejectReason.NOT_MANUAL_FIELD),
    (ResolveOp("r", "a", "u", S, VectorClock({"a": 1}), HLCTimestamp(100, 0, "a"), "", "body", "custom", 1),
     RejectReason.INVALID_OP),
    (ClientOp("r", "a", "u", S, {"a": 1}, HLCTimestamp(100, 0, "a"), {"x": 1}), RejectReason.INVALID_OP),  # type: ignore[arg-type]
    (ClientOp("r", "a", "u", S, VectorClock({"a": 1}), HLCTimestamp(100, 0, "a"), {"x": 1}, base_version=-1),
     RejectReason.INVALID_BASE_VERSION),
    ("not an op", RejectReason.INVALID_OP),
]


@pytest.mark.parametrize("bad,reason", REJECTIONS, ids=[r.value for _, r in REJECTIONS])
def test_rejected_ops_carry_a_reason_code_and_change_nothing(bad, reason):
    good = op("g", "g", {"g": 1}, 100, set={"title": "kept"})
    state = run([good]).state
    state2, events, (outcome,) = run([bad], state)
    assert outcome.kind is OutcomeKind.REJECTED and outcome.reason is reason
    assert outcome.to_wire()["reason"] == reason.value
    assert state2 == state and events == []


def test_clock_skew_and_op_age_are_checked_against_the_given_time():
    ahead = op("s1", "a", {"a": 1}, 5_000, set={"x": 1})
    old = op("s2", "a", {"a": 2}, 100, set={"x": 1})
    _, _, outcomes = run([ahead, old], now_ms=3_000)
    assert outcomes[0].reason is RejectReason.CLOCK_SKEW
    outcomes = run([old], now_ms=20_000).outcomes
    assert outcomes[0].reason is RejectReason.STALE_OP
    assert run([ahead, old]).outcomes[0].kind is OutcomeKind.APPLIED  # no time given: not checked


# ---------------------------------------------------------------- events and wire forms


def test_events_are_valid_envelopes_and_deterministic():
    ops = [
        op("a1", "a", {"a": 1}, 100, set={"body": "A", "tags": ["z", 3], "title": (1, [2])}),
        op("b1", "b", {"b": 1}, 120, set={"body": "B", "likes": 4}, delete=["title"]),
    ]
    first = run(ops)
    assert first == run(ops)  # same input, same output
    for se in first.events:
        check_stream(se.stream)
        check_type(se.event.type)
        pack(se.event.data)  # msgpack-encodable
    patched = [se for se in first.events if se.event.type == RECORD_PATCHED]
    assert [se.stream for se in patched] == [S, S]
    data = patched[0].event.data
    assert data["op"] == "a1" and data["vc"] == {"a": 1} and data["hlc"] == ops[0].hlc.encode()
    assert data["merge"] == {"tags": ["set_union", [3, "z"]]}
    assert data["lww"] == {"title": [1, [2]]} and data["manual"] == {"body": "A"}
    assert patched[1].event.data["deleted"] == {"title": "lww"}
    assert patched[1].event.data["merge"] == {"likes": ["counter", 4]}
    assert patched[0].event.actor.user == "user-a" and patched[0].event.clock["vc"] == {"a": 1}
    writes = as_stream_writes(first.events)
    assert [w.stream for w in writes] == [S, CONFLICTS_STREAM]
    assert sum(len(w.events) for w in writes) == len(first.events)


def test_ops_round_trip_through_their_wire_form():
    a = op("a1", "a", {"a": 1, "b": 3}, 100, set={"x": [1]}, delete=["y"])
    assert op_from_wire(a.to_wire()) == a
    r = ResolveOp("r", "a", "u", S, VectorClock({"a": 1}), HLCTimestamp(1, 2, "a"), "cf_1", "body", "a1", "v")
    assert op_from_wire(r.to_wire()) == r
    for bad in [None, {}, {"op": "x"}, {**a.to_wire(), "hlc": "zz"}, {**a.to_wire(), "vc": {"a": -1}}]:
        with pytest.raises(ValidationError):
            op_from_wire(bad)
