"""What the simulator shares between replicas must not change what each replica holds.

``SharedFolds`` lets replicas reading one log take a fold step another replica
already made (same state object before, same event): each replica must still end
with exactly the data, receipts, versions and conflict reports of its own fold,
however its batches were cut, and also after its state diverged (a restore).
"""
from __future__ import annotations

import random

import pytest

from syncline.clientkit.replica import RecordsReplica, SharedFolds
from syncline.simulations import scenarios
from syncline.simulations.network import _lognormal
from syncline.simulations.sim import Params, run


@pytest.fixture(scope="module")
def log():
    # Every resolution strategy, manual conflicts and resolutions included.
    sc = scenarios.get("offline-records").with_(ops_per_client=12, duration_ms=8_000)
    result, sim = run(sc, Params(clients=8, seed=5))
    assert result.ok, sim.failure(result)
    wires = [e.to_wire() for e in sim.log.replay()]
    assert any(w["type"] == "record.patched" and "/manual/" in w["stream"] for w in wires)
    return wires, sim.resolution


def _cut(wires: list[dict], seed: int) -> list[list[dict]]:
    """The same events in log order, cut into batches of 1 to 6 differently per seed."""
    r, out, i = random.Random(seed), [], 0
    while i < len(wires):
        k = r.randint(1, 6)
        out.append(wires[i:i + k])
        i += k
    return out


def _same(rep: RecordsReplica, alone: RecordsReplica) -> None:
    assert rep.confirmed.records.keys() == alone.confirmed.records.keys()
    assert rep.confirmed.same_data(alone.confirmed)
    for s, r in alone.confirmed.records.items():
        assert rep.version(s) == alone.version(s)
        assert dict(rep.confirmed.get(s).receipts) == dict(r.receipts)


def _conflict_ids(rep: RecordsReplica, batches: list[list[dict]]) -> list[str]:
    return [c.id for b in batches for c in rep.apply_wire_events(b)]


def test_shared_folds_give_each_replica_its_own_fold(log):
    wires, config = log
    alone = RecordsReplica(config)
    want = _conflict_ids(alone, _cut(wires, 0))
    assert want  # the log holds manual conflicts: their reports are compared too
    shared = SharedFolds()
    reps = []
    for cut in range(4):
        rep = RecordsReplica(config)
        rep.shared = shared
        assert sorted(_conflict_ids(rep, _cut(wires, cut))) == sorted(want)
        _same(rep, alone)
        reps.append(rep)
    # One chain of states: whatever the batches, the replicas hold the very same objects,
    # and every event was folded once.
    for s, r in reps[0].confirmed.records.items():
        assert all(rep.confirmed.records[s] is r for rep in reps[1:])
    assert shared.misses == sum(1 for w in wires if w["type"] == "record.patched")
    assert shared.hits == 3 * shared.misses


def test_replicas_handed_the_same_batches_share_whole_batches(log):
    # The server hands the connections at one cursor the very same list: replicas in step
    # take such a batch in one lookup, and still end with their own fold's data and reports.
    wires, config = log
    batches = _cut(wires, 6)
    alone = RecordsReplica(config)
    want = [_conflict_ids(alone, [b]) for b in batches]
    shared = SharedFolds()
    reps = [RecordsReplica(config) for _ in range(3)]
    for rep in reps:
        rep.shared = shared
    late = RecordsReplica(config)  # joins halfway from a restored state: objects of its own
    donor = RecordsReplica(config)
    donor.track_changes()
    half = len(batches) // 2
    _conflict_ids(donor, batches[:half])
    late.restore(donor.export(everything=True))
    late.shared = shared
    # One that missed a batch: handed the same lists afterwards, it must not take them for
    # the batches the others folded (its state before them is another one).
    gap, gap_alone = RecordsReplica(config), RecordsReplica(config)
    gap.shared = shared
    for i, b in enumerate(batches):
        for rep in reps:
            assert [c.id for c in rep.apply_wire_events(b)] == want[i]
        if i >= half:
            late.apply_wire_events(b)
        if i != 1:
            gap.apply_wire_events(b)
            gap_alone.apply_wire_events(b)
    _same(gap, gap_alone)  # receipts included: none of the missed batch's ops
    assert any(w["type"] == "record.patched" for w in batches[1])
    for rep in reps:
        _same(rep, alone)
    assert late.confirmed.same_data(alone.confirmed)  # (a restored state has no receipts)
    assert shared.batch_hits >= 2 * (len(batches) - 1)
    assert reps[1].confirmed is reps[0].confirmed and reps[2].confirmed is reps[0].confirmed
    # A list changed after it was folded is not taken for the batch it was.
    again = RecordsReplica(config)
    again.shared = shared
    grown = batches[0]
    grown.append(batches[1][0])
    _conflict_ids(again, [grown] + [batches[1][1:]] + batches[2:])
    _same(again, alone)


def test_a_diverged_replica_folds_its_own_chain(log):
    wires, config = log
    half = len(wires) // 2
    alone = RecordsReplica(config)
    _conflict_ids(alone, _cut(wires, 1))
    shared = SharedFolds()
    first = RecordsReplica(config)
    first.shared = shared
    _conflict_ids(first, _cut(wires, 2))
    # A replica restored from a save halfway: equal data in objects of its own.
    donor = RecordsReplica(config)
    donor.track_changes()
    _conflict_ids(donor, [wires[:half]])
    restored = RecordsReplica(config)
    restored.restore(donor.export(everything=True))
    restored.shared = shared
    _conflict_ids(restored, _cut(wires[half:], 3))
    assert restored.confirmed.same_data(alone.confirmed)
    assert all(restored.confirmed.records[s] is not r for s, r in first.confirmed.records.items())


def test_beyond_the_chain_limit_a_replica_folds_alone(log):
    wires, config = log

    class OneChain(SharedFolds):
        MAX_CHAINS = 1

    alone = RecordsReplica(config)
    want = _conflict_ids(alone, _cut(wires, 4))
    shared = OneChain()
    a, b = RecordsReplica(config), RecordsReplica(config)
    for rep in (a, b):
        rep.restore({})  # an installed (empty) state: each replica's own objects
        rep.shared = shared
        assert sorted(_conflict_ids(rep, _cut(wires, 5))) == sorted(want)
        assert rep.confirmed.same_data(alone.confirmed)


def test_export_blobs_are_shared_per_state_and_version(log):
    wires, config = log
    shared = SharedFolds()
    a, b, plain = RecordsReplica(config), RecordsReplica(config), RecordsReplica(config)
    for rep in (a, b, plain):
        rep.track_changes()
        if rep is not plain:
            rep.shared = shared
        _conflict_ids(rep, [wires])
    ea, eb, ep = a.export(), b.export(), plain.export()
    assert ea == eb == ep
    assert all(ea[s] is eb[s] for s in ea)


def test_latency_draws_are_random_lognormvariate():
    for seed in range(5):
        a, b = random.Random(seed), random.Random(seed)
        assert [_lognormal(a, 0.6) for _ in range(2_000)] == [b.lognormvariate(0.0, 0.6) for _ in range(2_000)]
        assert a.random() == b.random()  # the same number of draws


@pytest.mark.parametrize("name", ["bench-1000x100", "docs-partitions"])
def test_same_seed_same_bytes(name):
    # The benchmark's scenario (shared folds and batches at work) and Yjs documents
    # (seeded client ids) give a byte-identical log and trace for a seed.
    sc = scenarios.get(name).with_(ops_per_client=8, tenants=2, duration_ms=8_000)
    a, _ = run(sc, Params(clients=20, seed=9))
    b, _ = run(sc, Params(clients=20, seed=9))
    assert a.ok and (a.log_hash, a.trace_hash, a.steps) == (b.log_hash, b.trace_hash, b.steps)
