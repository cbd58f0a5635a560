"""The fold's copy-on-write receipts and the shared patch-decode cache change no result."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.codec import pack, unpack
from syncline.engine.events import RecordedEvent, Retention
from syncline.engine.records import (
    LWW,
    RECORD_PATCHED,
    ClientOp,
    CollectionPolicy,
    MergeRegistry,
    RecordsState,
    ResolutionConfig,
    fold_record_events,
    merged,
    payloads,
    reconcile,
)
from syncline.engine.records.receipts import Receipts

S = "rec/notes/1"
CFG = ResolutionConfig({"notes": CollectionPolicy(fields={"title": LWW, "likes": merged("counter"),
                                                          "seen": merged("max")})})


def events_for(sets, tenant="t", start=1):
    ops = [ClientOp(op_id=f"c{i % 3}.{i}", client=f"c{i % 3}", user="u", stream=S,
                    clock=VectorClock({f"c{i % 3}": i + 1}), hlc=HLCTimestamp(100 + i, 0, f"c{i % 3}"),
                    set=s, delete=()) for i, s in enumerate(sets)]
    _, emitted, _ = reconcile(RecordsState(), ops, CFG)
    out = []
    for pos, se in enumerate((se for se in emitted if se.event.type == RECORD_PATCHED), start):
        e = se.event
        out.append(RecordedEvent(f"e{pos}", tenant, se.stream, pos, pos, e.type, e.schema, 0, e.actor,
                                 unpack(pack(dict(e.clock))), unpack(pack(e.data)), e.meta, Retention.STANDARD))
    return out


def plain(state):
    return {s: (r.values(), r.clock, dict(r.receipts)) for s, r in state.records.items()}


@given(st.lists(st.fixed_dictionaries({"title": st.text(max_size=3), "likes": st.integers(-5, 5)}),
                min_size=2, max_size=12), st.data())
def test_batches_and_branches_fold_to_the_same_state_and_old_states_never_change(sets, data):
    evs = events_for(sets)
    whole = fold_record_events(RecordsState(), evs, CFG.registry)
    cut = data.draw(st.integers(1, len(evs) - 1))
    first = fold_record_events(RecordsState(), evs[:cut], CFG.registry)
    before = plain(first)
    # Two branches from the same state: the second must not see the first's receipts.
    a = fold_record_events(first, evs[cut:], CFG.registry)
    b = fold_record_events(first, evs[cut:cut + 1], CFG.registry)
    assert plain(a) == plain(whole)
    assert plain(first) == before
    assert len(b.get(S).receipts) == cut + 1 and list(b.get(S).receipts) == list(whole.get(S).receipts)[:cut + 1]
    # One event at a time, with the shared decode, gives the same state too.
    step = RecordsState()
    for e in evs:
        step = fold_record_events(step, [e], CFG.registry, shared_decode=True)
    assert plain(step) == plain(whole) and step.get(S) == whole.get(S)


def test_receipts_view_reads_like_a_mapping_and_a_failed_fold_leaves_state_usable():
    evs = events_for([{"title": "a"}, {"title": "b"}, {"likes": 2}])
    s1 = fold_record_events(RecordsState(), evs[:2], CFG.registry)
    r = s1.get(S).receipts
    assert type(r) is Receipts and len(r) == 2 and evs[0].data["op"] in r and "nope" not in r
    assert r.get(evs[2].data["op"]) is None and dict(r) == {k: r[k] for k in r}
    bad = RecordedEvent("x", "t", S, 9, 9, RECORD_PATCHED, 1, 0, evs[2].actor, {}, {"op": "broken"}, {},
                        Retention.STANDARD)
    with pytest.raises(KeyError):
        fold_record_events(s1, [evs[2], bad], CFG.registry)  # appended evs[2], then failed
    assert len(r) == 2 and evs[2].data["op"] not in r  # the old state never sees it
    s2 = fold_record_events(s1, evs[2:], CFG.registry)
    assert len(s2.get(S).receipts) == 3 and s2.get(S).values()["likes"] == 2
    with pytest.raises(KeyError):
        r[evs[2].data["op"]]


def test_patch_cache_returns_equal_results_and_tells_alike_values_apart():
    payloads.clear_patch_cache()
    reg = CFG.registry
    e = events_for([{"title": "x", "seen": 1}])[0]
    direct = payloads.decode_patch(S, e.data, reg)
    once = payloads.decode_patch_cached("t", 1, S, e.data, reg)
    assert once[0] == direct[0] and list(once[1]) == direct[1] and once[2] == direct[2]
    assert payloads.decode_patch_cached("t", 1, S, unpack(pack(e.data)), reg) is once  # an equal copy: shared
    # Equal under ``==`` but not alike: 1 / 1.0 / True must decode apart.
    d = unpack(pack(e.data))
    d["merge"]["seen"][1] = 1.0
    again = payloads.decode_patch_cached("t", 1, S, d, reg)
    assert again is not once and type(again[1][-1][2]) is float
    e1 = events_for([{"title": 1}])[0]
    one = payloads.decode_patch_cached("t", 7, S, e1.data, reg)
    d = unpack(pack(e1.data))
    d["lww"]["title"] = True
    assert d == e1.data
    t = payloads.decode_patch_cached("t", 7, S, d, reg)
    assert t is not one and t[1][0][2] is True
    d = unpack(pack(e.data))
    d["lww"]["title"] = -0.0
    z = payloads.decode_patch_cached("t", 1, S, d, reg)
    d2 = unpack(pack(d))
    d2["lww"]["title"] = 0.0
    assert repr(payloads.decode_patch_cached("t", 1, S, d2, reg)[1][0][2]) == "0.0" and z[1][0][2] is not None
    # Another registry or stream: decoded again.
    assert payloads.decode_patch_cached("t", 1, S, d2, MergeRegistry.with_builtins()) is not None
    payloads.clear_patch_cache()


def test_patch_cache_shares_mutable_values_only_with_the_same_data_object():
    payloads.clear_patch_cache()
    e = events_for([{"title": "x"}])[0]
    data = unpack(pack(e.data))
    data["lww"]["title"] = ["a", "list"]
    first = payloads.decode_patch_cached("t", 1, S, data, CFG.registry)
    assert payloads.decode_patch_cached("t", 1, S, data, CFG.registry) is first
    copy = unpack(pack(data))
    other = payloads.decode_patch_cached("t", 1, S, copy, CFG.registry)
    assert other is not first and other[1][0][2] is copy["lww"]["title"]  # this replica's own list
    payloads.clear_patch_cache()


def test_patch_cache_is_bounded():
    payloads.clear_patch_cache()
    e = events_for([{"title": "x"}])[0]
    for pos in range(payloads.PATCH_CACHE_SIZE + 50):
        payloads.decode_patch_cached("t", pos, S, e.data, CFG.registry)
    assert len(payloads._patch_cache) == payloads.PATCH_CACHE_SIZE
    payloads.clear_patch_cache()
