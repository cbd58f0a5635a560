"""The collector pause around engine steps: restored on every exit, and never turned on by us."""
from __future__ import annotations

import gc

import pytest

from engine.clocks import HLCTimestamp, VectorClock
from engine.gcpause import collector_paused
from engine.records import ClientOp, RecordsState, ResolutionConfig, reconcile
from engine.records.config import CollectionPolicy, merged
from engine.records.merges import MergeRegistry


@pytest.fixture(autouse=True)
def _restore_collector():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_inside_and_restored_after():
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_when_the_step_raises():
    gc.enable()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_left_off_when_the_caller_turned_it_off():
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_nested_pauses_restore_only_at_the_outermost():
    gc.enable()
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_reconcile_runs_with_the_collector_paused_and_restores_it():
    seen: list[bool] = []

    def checked_max(v):  # a merge operand check that notes whether the collector was on
        seen.append(gc.isenabled())
        return int(v)

    registry = MergeRegistry.with_builtins()
    registry.register("checked_max", max, samples=[1, 2, 3], validate=checked_max)
    config = ResolutionConfig({"tasks": CollectionPolicy(fields={"n": merged("checked_max")})}, registry=registry)
    op = ClientOp(
        op_id="o1", client="c1", user="u1", stream="rec/tasks/1",
        clock=VectorClock({"c1": 1}), hlc=HLCTimestamp(1, 0, "c1"), set={"n": 5},
    )
    gc.enable()
    seen.clear()
    _, _, outcomes = reconcile(RecordsState(), [op], config)
    assert [o.kind.value for o in outcomes] == ["applied"]
    assert seen == [False]  # validated during reconcile, with the collector paused
    assert gc.isenabled()
    gc.disable()
    reconcile(RecordsState(), [op], config)
    assert not gc.isenabled()  # the caller's choice stands
