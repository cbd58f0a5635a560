"""Strong eventual consistency of records, and the fold over emitted events.

Random causal histories (several clients, records and every strategy, including
deletes and resolutions) are delivered to several replicas in different orders,
with duplicates and in different batches. Every replica must end with the same
data, equal to a reference computed from the set of ops alone; and folding each
replica's emitted events (through msgpack) must rebuild exactly its state.
"""
from __future__ import annotations

from collections import Counter
from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.codec import pack, unpack
from syncline.engine.events import RecordedEvent, Retention
from syncline.engine.records import (
    LWW,
    MANUAL,
    NO_INITIAL,
    ClientOp,
    CollectionPolicy,
    OutcomeKind,
    RecordsState,
    ResolutionConfig,
    ResolveOp,
    apply_record_event,
    fold_record_events,
    merged,
    reconcile,
)
from syncline.engine.records.merges import COUNTER, MAX, UNION

CFG = ResolutionConfig(
    {
        "t": CollectionPolicy(
            fields={
                "title": LWW,
                "body": MANUAL,
                "n": merged("counter"),
                "tags": merged("set_union"),
                "hi": merged("max"),
            }
        )
    }
)
CLIENTS = ["a", "b", "c", "d"]
STREAMS = ["rec/t/1", "rec/t/2"]
REGISTER_FIELDS = ["title", "body", "free"]  # "free" is undeclared: LWW by default
MERGE_FIELDS = {
    "n": (COUNTER, st.integers(-5, 5)),
    "tags": (UNION, st.lists(st.sampled_from(["x", "y", 1, 2]), max_size=2)),
    "hi": (MAX, st.integers(0, 9) | st.sampled_from([1.0, 2.5])),
}


@st.composite
def histories(draw):
    """Ops whose clocks describe a real causal history, with HLCs drawn at random
    (so LWW order is not tied to delivery or causal order)."""
    ops = []
    seen: dict[tuple[str, str], VectorClock] = {}  # what a client knows of a record
    made: dict[str, list] = {s: [] for s in STREAMS}
    for i in range(draw(st.integers(1, 14))):
        client = draw(st.sampled_from(CLIENTS))
        stream = draw(st.sampled_from(STREAMS))
        known = seen.get((client, stream), VectorClock())
        # learn about some ops others made on this record
        for other in draw(st.lists(st.sampled_from(made[stream]), max_size=3)) if made[stream] else []:
            known = known.merge(other.clock)
        clock = known.increment(client)
        seen[(client, stream)] = clock
        hlc = HLCTimestamp(draw(st.integers(0, 6)), draw(st.integers(0, 1)), client)
        op_id = f"op{i}"
        if draw(st.integers(0, 5)) == 0:
            op = ResolveOp(op_id, client, f"u-{client}", stream, clock, hlc, "cf_any", "body",
                           "custom", draw(st.integers(0, 3)), draw(st.booleans()))
        else:
            sets = {}
            deletes = []
            names = st.lists(st.sampled_from(REGISTER_FIELDS + list(MERGE_FIELDS)), min_size=1, max_size=3, unique=True)
            for name in draw(names):
                if name in MERGE_FIELDS:
                    sets[name] = draw(MERGE_FIELDS[name][1])
                elif draw(st.integers(0, 4)) == 0:
                    deletes.append(name)
                else:
                    sets[name] = draw(st.integers(0, 3))
            op = ClientOp(op_id, client, f"u-{client}", stream, clock, hlc, sets, tuple(deletes))
        ops.append(op)
        made[stream].append(op)
    return ops


@st.composite
def deliveries(draw, ops):
    """A delivery order with duplicates, cut into batches."""
    order = draw(st.permutations(ops))
    dups = draw(st.lists(st.sampled_from(ops), max_size=4))
    for d in dups:
        order.insert(draw(st.integers(0, len(order))), d)
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=3)))
    bounds = [0, *cuts, len(order)]
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


def deliver(batches):
    state = RecordsState()
    events = []
    outcomes = []
    for batch in batches:
        state, evs, outs = reconcile(state, batch, CFG)
        events.extend(evs)
        outcomes.extend(outs)
    return state, events, outcomes


def recorded(stream_events):
    """What a store would hand back: envelopes with versions, payloads through msgpack."""
    versions: Counter[str] = Counter()
    out = []
    for pos, se in enumerate(stream_events, 1):
        versions[se.stream] += 1
        e = se.event
        out.append(RecordedEvent(f"e{pos}", "t", se.stream, versions[se.stream], pos, e.type,
                                 e.schema, 0, e.actor, unpack(pack(dict(e.clock))),
                                 unpack(pack(e.data)), e.meta, Retention.STANDARD))
    return out


def writes_of(op):
    if isinstance(op, ResolveOp):
        return {op.field: (None if op.deleted else op.value, op.deleted)}
    out = {k: (v, False) for k, v in op.set.items()}
    out.update({k: (None, True) for k in op.delete})
    return out


def reference(ops):
    """Each record's data computed from the set of ops alone, no order involved."""
    expect = {}
    for stream in STREAMS:
        mine = [o for o in ops if o.stream == stream]
        if not mine:
            continue
        rec = {}
        for name in REGISTER_FIELDS:
            ws = [(o, writes_of(o)[name]) for o in mine if name in writes_of(o)]
            if not ws:
                continue
            if name == "body":  # manual: the causally maximal writes, earliest shown
                maxi = [(o, w) for o, w in ws if not any(o.clock < p.clock for p, _ in ws)]
                maxi.sort(key=lambda x: (x[0].hlc[0], x[0].hlc[1], x[0].client, x[0].op_id))
                rec[name] = (maxi[0][1], sorted(o.op_id for o, _ in maxi))
            else:
                o, w = max(ws, key=lambda x: (x[0].hlc[0], x[0].hlc[1], x[0].client, x[0].op_id))
                rec[name] = (w, None)
        for name, (mf, _) in MERGE_FIELDS.items():
            operands = [mf.validate(o.set[name]) for o in mine if isinstance(o, ClientOp) and name in o.set]
            if operands:
                acc = reduce(mf.combine, operands, mf.initial)
                rec[name] = ((acc, False), None)
        expect[stream] = (rec, reduce(VectorClock.merge, (o.clock for o in mine)))
    return expect


def observed(state):
    got = {}
    for stream, r in state.records.items():
        rec = {}
        for name, f in r.fields.items():
            if hasattr(f, "versions"):
                rec[name] = ((f.value, f.deleted), sorted(w.stamp.op_id for w in f.versions))
            elif hasattr(f, "acc"):
                rec[name] = ((None if f.acc is NO_INITIAL else f.acc, False), None)
            else:
                rec[name] = ((f.value, f.deleted), None)
        got[stream] = (rec, r.clock)
    return got


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_replicas_with_the_same_ops_in_any_order_with_duplicates_end_identical(data):
    ops = data.draw(histories())
    replicas = [deliver(data.draw(deliveries(ops))) for _ in range(3)]
    first = replicas[0][0]
    for state, _, outcomes in replicas:
        assert state.same_data(first)
        assert observed(state) == observed(first)
        for stream, r in state.records.items():
            assert set(r.receipts) == {o.op_id for o in ops if o.stream == stream}
            assert r.values() == first.get(stream).values()
            assert r.conflicts() == first.get(stream).conflicts()
        assert all(o.kind is not OutcomeKind.REJECTED for o in outcomes)
    assert observed(first) == reference(ops)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_folding_the_emitted_events_rebuilds_exactly_the_reconciled_state(data):
    ops = data.draw(histories())
    state, events, _ = deliver(data.draw(deliveries(ops)))
    log = recorded(events)
    assert fold_record_events(RecordsState(), log) == state
    one_by_one = RecordsState()
    for ev in log:
        one_by_one = apply_record_event(one_by_one, ev)
    assert one_by_one == state
    # a fold resumed from a checkpoint gives the same result
    cut = data.draw(st.integers(0, len(log)))
    assert fold_record_events(fold_record_events(RecordsState(), log[:cut]), log[cut:]) == state


def test_exactly_one_conflict_per_concurrent_group_on_every_replica():
    def mk(i, c, wall):
        return ClientOp(f"w{i}", c, "u", "rec/t/9", VectorClock({c: 1}), HLCTimestamp(wall, 0, c), {"body": i})

    ops = [mk(0, "a", 3), mk(1, "b", 1), mk(2, "c", 2)]
    ids = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2, 1]):
        state = deliver([[ops[i] for i in order]])[0]
        (conflict,) = state.get("rec/t/9").conflicts()
        ids.add(conflict.id)
        assert conflict.held.stamp.op_id == "w1"  # the earliest write is held on all
    assert len(ids) == 1
