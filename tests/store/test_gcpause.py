"""The collector pause around engine steps: restored on every exit, and never turned on by us."""
from __future__ import annotations

import asyncio
import gc

import pytest

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.records import ClientOp, RecordsState, ResolutionConfig, reconcile
from syncline.engine.records.config import CollectionPolicy, merged
from syncline.engine.records.merges import MergeRegistry
from syncline.store.gcpause import collector_paused


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


def test_the_engine_leaves_the_collector_alone_and_the_records_service_pauses_it():
    seen: list[bool] = []

    def checked_max(v):  # a merge operand check that notes whether the collector was on
        seen.append(gc.isenabled())
        return int(v)

    registry = MergeRegistry.with_builtins()
    registry.register("checked_max", max, samples=[1, 2, 3], validate=checked_max)
    config = ResolutionConfig({"tasks": CollectionPolicy(fields={"n": merged("checked_max")})}, registry=registry)

    def op(n: int) -> ClientOp:
        return ClientOp(op_id=f"o{n}", client="c1", user="u1", stream="rec/tasks/1",
                        clock=VectorClock({"c1": n}), hlc=HLCTimestamp(n, 0, "c1"), set={"n": n})

    gc.enable()
    seen.clear()
    _, _, outcomes = reconcile(RecordsState(), [op(1)], config)
    assert [o.kind.value for o in outcomes] == ["applied"]
    assert seen and all(seen), "engine.records.reconcile must not touch the collector"

    async def through_the_service() -> None:
        from syncline.store import open_store
        from syncline.store.records_service import RecordsService

        store = await open_store("memory://")
        try:
            seen.clear()
            outcomes = await RecordsService(store, config).submit("acme", [op(2)])
            assert [o.kind.value for o in outcomes] == ["applied"]
        finally:
            await store.close()

    asyncio.run(through_the_service())
    assert seen and not any(seen), "the records service reconciles with the collector paused"
    assert gc.isenabled()
