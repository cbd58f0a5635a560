"""Consumer groups across processes on one PostgreSQL, with a member killed by SIGKILL."""
from __future__ import annotations

from collections import defaultdict

import asyncpg
import pytest
from bus_helpers import WorkerProc, eventually

from syncline.engine.events import NewEvent, StreamWrite
from syncline.store import open_store
from syncline.store.bus_schema import bus_partitions

pytestmark = pytest.mark.slow

EFFECTS = """CREATE TABLE effects (
    seq BIGSERIAL PRIMARY KEY, event_id VARCHAR(36) NOT NULL UNIQUE, stream VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL, member VARCHAR(64) NOT NULL)"""


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg", "postgresql")


async def _publish(store, n_events: int, n_streams: int) -> dict[str, str]:
    ids: dict[str, str] = {}
    per_call = 50
    for start in range(0, n_events, per_call):
        writes = defaultdict(list)
        for i in range(start, min(start + per_call, n_events)):
            writes[f"order/{i % n_streams}"].append(NewEvent("order.step", {"i": i}))
        r = await store.append_many("acme", [StreamWrite(s, tuple(evs)) for s, evs in writes.items()])
        ids.update({eid: "" for eid in r.event_ids})
    await store.append("other", "order/x", [NewEvent("order.step", {"i": -1})])  # another tenant: never seen
    return ids


async def test_group_of_three_processes_survives_sigkill(pg_clean_url):
    store = await open_store(pg_clean_url, poll_interval_s=0.2)
    db = await asyncpg.connect(_dsn(pg_clean_url))
    await db.execute(EFFECTS)
    n_events, n_streams = 1500, 30
    workers = [WorkerProc(pg_clean_url, "billing", f"w{i}", "group", "4") for i in range(3)]
    try:
        await eventually(lambda: all(w.ready for w in workers), 30, "workers to start")
        ids = await _publish(store, n_events, n_streams)

        async def effects() -> int:
            return await db.fetchval("SELECT count(*) FROM effects")

        victim = workers[1]
        await eventually(lambda: len(victim.handled()) >= 40, 30, "the victim to handle a batch")
        victim.kill()  # SIGKILL, mid-batch: it had work queued and checkpoints not yet written

        async def done() -> bool:
            return await effects() >= n_events

        await eventually(done, 45, "every event to take effect")

        # exactly once: one effect per event (event_id is UNIQUE, so also no duplicate effect)
        rows = await db.fetch("SELECT event_id, stream, version, member FROM effects ORDER BY seq")
        assert len(rows) == n_events
        assert {r["event_id"] for r in rows} == set(ids)
        # at least once: every event was delivered to some member
        delivered = {eid for w in workers for eid, _, _ in w.handled()}
        assert delivered >= set(ids)
        # per-stream order: effects of each stream were committed in version order
        by_stream: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            by_stream[r["stream"]].append(r["version"])
        for stream, versions in by_stream.items():
            assert versions == list(range(1, len(versions) + 1)), stream
        # the survivors took the dead member's partitions over, and checkpoints reached the head
        async def rebalanced() -> bool:
            owners = await db.fetch("SELECT owner, position FROM bus_partitions WHERE group_name = 'billing'")
            return {o["owner"] for o in owners} == {"w0", "w2"}

        await eventually(rebalanced, 15, "the survivors to own every partition")
        head = await store.head_position()

        async def checkpointed() -> bool:
            low = await db.fetchval("SELECT min(position) FROM bus_partitions WHERE group_name = 'billing'")
            return low >= head - 1  # the other tenant's last event is not the group's

        await eventually(checkpointed, 10, "checkpoints to reach the head")
        assert any(r["member"] == "w1" for r in rows)  # the victim did real work before dying
        assert not any(r["owner"] == "w1" for r in await db.fetch(
            f"SELECT owner FROM {bus_partitions.name}"))
    finally:
        for w in workers:
            w.stop()
        await db.close()
        await store.close()
    errors = [line for w in workers for line in w.errors if "Traceback" in line]
    assert not errors, "\n".join(workers[0].errors + workers[2].errors)


async def test_durable_subscription_survives_a_killed_process(pg_clean_url):
    store = await open_store(pg_clean_url, poll_interval_s=0.2)
    db = await asyncpg.connect(_dsn(pg_clean_url))
    await db.execute(EFFECTS)
    first = WorkerProc(pg_clean_url, "mailer", "d1", "durable", "2")
    second = None
    try:
        await eventually(lambda: first.ready, 30, "the subscriber to start")
        ids = await _publish(store, 400, 7)
        await eventually(lambda: len(first.handled()) >= 100, 30, "the first process to make progress")
        first.kill()
        before = await db.fetchval("SELECT count(*) FROM effects")
        assert before < 400
        second = WorkerProc(pg_clean_url, "mailer", "d2", "durable", "0")
        await eventually(lambda: second.ready, 30, "the restarted subscriber")

        async def all_done() -> bool:
            return await db.fetchval("SELECT count(*) FROM effects") >= 400

        await eventually(all_done, 30, "the restarted subscriber to catch up")
        rows = await db.fetch("SELECT event_id, member FROM effects ORDER BY seq")
        assert {r["event_id"] for r in rows} == set(ids)
        # no loss, and no repetition beyond at-least-once: the restart resumed near where the
        # first process stopped, not from the beginning
        redelivered = {e for e, _, _ in second.handled()} & {e for e, _, _ in first.handled()}
        assert len(redelivered) < 100
        assert len(second.handled()) <= 400 - before + len(redelivered)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await db.close()
        await store.close()
