"""Housekeeping of the bus's tables by the store's prune job."""
from __future__ import annotations

from sqlalchemy import select

from syncline.store.bus import mark_processed
from syncline.store.bus._db import now_us
from syncline.store.bus_schema import bus_processed
from syncline.store.maintenance import prune_job

DAY_US = 86_400 * 1_000_000


async def test_prune_job_forgets_processed_ids_older_than_the_retention(store):
    w, r = store.engines
    now = now_us()
    async with w.begin() as conn:
        for i in range(4):
            await mark_processed(conn, "acme", "billing", f"e{i}")
        # backdate the records (mark_processed stamps them with the wall clock)
        for i, age_days in enumerate((30, 8, 6, 0)):
            await conn.execute(
                bus_processed.update()
                .where(bus_processed.c.event_id == f"e{i}")
                .values(processed_us=now - age_days * DAY_US)
            )
        await mark_processed(conn, "other", "mailer", "old")
        await conn.execute(
            bus_processed.update().where(bus_processed.c.event_id == "old").values(processed_us=now - 9 * DAY_US)
        )

    await prune_job(store, retention_s=7 * 86_400, now_us=now)

    async with r.connect() as conn:
        left = set((await conn.execute(select(bus_processed.c.event_id))).scalars())
    assert left == {"e2", "e3"}
    # what was forgotten counts as new again (the record is gone, the group's id space reusable)
    async with w.begin() as conn:
        assert await mark_processed(conn, "acme", "billing", "e0") is True
        assert await mark_processed(conn, "acme", "billing", "e3") is False


async def test_prune_job_on_memory_store_skips_the_bus():
    from syncline.store import open_store

    s = await open_store("memory://")
    try:
        report = await prune_job(s, retention_s=60)
        assert report.events_deleted == 0
    finally:
        await s.close()
