"""A handler that kills its worker process counts as a failed attempt: a poison event
that crashes every worker that takes it reaches the dead-letter queue after
max_attempts (3) crashes, and the group moves on."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
from bus_helpers import WorkerProc, eventually

from syncline.bus import Bus
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.bus import GroupStore

pytestmark = pytest.mark.slow

EFFECTS = """CREATE TABLE effects (
    seq BIGSERIAL PRIMARY KEY, event_id VARCHAR(36) NOT NULL UNIQUE, stream VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL, member VARCHAR(64) NOT NULL)"""


async def test_poison_event_that_kills_its_worker_is_dead_lettered_after_three_crashes(pg_clean_url):
    store = await open_store(pg_clean_url, poll_interval_s=0.2)
    db = await asyncpg.connect(pg_clean_url.replace("postgresql+asyncpg", "postgresql"))
    await db.execute(EFFECTS)
    workers: list[WorkerProc] = []
    try:
        ids = []
        for n in range(30):
            r = await store.append("acme", f"order/{n % 5}", [NewEvent("order.step", {"n": n, "kill": n == 12})])
            ids.append(r.event_ids[0])
        poison = ids[12]
        head = await store.head_position()

        crashes = 0
        while True:
            w = WorkerProc(pg_clean_url, "billing", f"w{len(workers)}", "group", "0")
            workers.append(w)

            async def settled() -> bool:
                if w.proc.poll() is not None:
                    return True
                return await db.fetchval("SELECT count(*) FROM effects") >= len(ids) - 1

            try:
                await eventually(settled, 30, f"worker {len(workers)} to die or finish")
            except AssertionError:
                print("\n".join(w.lines + w.errors))
                print(await db.fetch("SELECT * FROM bus_attempts"))
                print(await db.fetch("SELECT event_id, reason FROM bus_dead_letters"))
                raise
            if w.proc.poll() is None:
                break
            crashes += 1
            assert crashes <= 3, "the poison event was delivered again after 3 crashes"

        # 3 workers died in the handler (the first and two restarts); the third restart
        # dead-lettered the event without calling the handler again
        assert crashes == 3
        tries = [line for x in workers for line in x.lines if line.startswith(f"handling {poison}")]
        assert len(tries) == 3
        assert not any(line.startswith("handling") for line in workers[-1].lines)

        [entry] = await Bus(store).dlq.query(scope="acme", group="billing")
        assert entry.event_id == poison and entry.attempts == 3
        assert "worker crashed" in entry.reason
        assert entry.event["data"] == {"n": 12, "kill": True}

        # the group moved on: every other event took effect exactly once, and the
        # checkpoints passed the poison event
        rows = await db.fetch("SELECT event_id FROM effects")
        assert sorted(r["event_id"] for r in rows) == sorted(set(ids) - {poison})

        async def checkpointed() -> bool:
            low = await db.fetchval("SELECT min(position) FROM bus_partitions WHERE group_name = 'billing'")
            return low >= head

        await eventually(checkpointed, 10, "checkpoints to pass the poison event")
        assert await db.fetchval("SELECT count(*) FROM bus_attempts") == 0
    finally:
        for x in workers:
            x.stop()
        await db.close()
        await store.close()


async def test_attempts_cut_off_by_a_crash_count_in_process(store, bus):
    """The same on SQLite and PostgreSQL, in one process: a member aborted (as a crash
    would, no checkpoint, no release) while its handler is stuck on an event."""
    stuck = asyncio.Event()
    calls: list[tuple[str, int]] = []

    async def handler(d):
        calls.append((d.event.id, d.attempt))
        if d.event.data.get("hang"):
            stuck.set()
            await asyncio.Event().wait()  # never returns: the member is killed in here

    ids = []
    for n in range(8):
        r = await store.append("acme", f"order/{n % 2}", [NewEvent("order.step", {"n": n, "hang": n == 3})])
        ids.append(r.event_ids[0])
    head = await store.head_position()
    options = dict(tenant="acme", partitions=2, lease_s=0.6)
    for crash in range(3):
        stuck.clear()
        m = await bus.group("billing", handler, member_id=f"m{crash}", **options).start()
        await eventually(stuck.is_set, what=f"member {crash} to take the event")
        await m.abort()
    survivor = await bus.group("billing", handler, member_id="m3", **options).start()
    try:
        await eventually(lambda: survivor.stats.dead_lettered == 1, what="the event to be dead-lettered")
        assert [a for eid, a in calls if eid == ids[3]] == [1, 2, 3]  # as the handlers saw them
        [entry] = await bus.dlq.query(scope="acme", group="billing")
        assert entry.event_id == ids[3] and entry.attempts == 3 and "worker crashed" in entry.reason
        gs = GroupStore(store, "acme", "billing")

        async def past_it() -> bool:
            return await gs.low_watermark() >= head

        await eventually(past_it, what="the group to move past the event")
        assert {eid for eid, _ in calls} == set(ids)
    finally:
        await survivor.stop()
