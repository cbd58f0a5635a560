"""Members read only their partitions' rows (``events.pkey``, migration 0006): every event
still reaches exactly the member that owns its partition, through joins, hand-overs and
live publishing; rows without a key (written before the migration) are still delivered."""
from __future__ import annotations

from bus_helpers import eventually
from sqlalchemy import text

from syncline.bus import Batch, Bus
from syncline.bus.events import partition_of
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.bus import GroupStore
from syncline.store.bus_schema import partition_key


async def test_stored_partition_key_is_the_bus_partition_function(store):
    await store.append("acme", "order/1", [NewEvent("order.placed", {"n": 1})])
    await store.append("acme", "inv/2026-x_y.z", [NewEvent("order.placed", {"n": 2})])
    async with store._w.connect() as conn:
        rows = (await conn.execute(text("SELECT tenant, stream, pkey FROM events ORDER BY position"))).all()
    assert [r.pkey for r in rows] == [partition_key(r.tenant, r.stream) for r in rows]
    page = await store.read_log("acme", after=0)
    assert [partition_of(ev, 16) for ev in page.events] == [r.pkey % 16 for r in rows]


async def test_members_on_separate_stores_each_read_their_partitions_and_miss_nothing(bus_url, store):
    # Rows written "before the migration": no key; every reader reads them and splits them itself.
    for n in range(20):
        await store.append("acme", f"old/{n % 7}", [NewEvent("order.placed", {"n": n})])
    async with store._w.begin() as conn:
        await conn.execute(text("UPDATE events SET pkey = NULL"))
    stores = [await open_store(bus_url, poll_interval_s=0.1) for _ in range(4)]
    seen: dict[str, list[tuple[str, int]]] = {}
    members = []

    def handler_for(name: str):
        async def handler(batch: Batch) -> None:
            for d in batch.deliveries:
                seen.setdefault(d.event.id, []).append((name, d.event.position))

        return handler

    try:
        for i, s in enumerate(stores):  # joining one by one: partitions are handed over meanwhile
            members.append(await Bus(s).group("g", handler_for(f"m{i}"), tenant="acme", partitions=16, batched=True,
                                              member_id=f"m{i}", lease_s=1.2, batch=50).start())
            for n in range(60):
                await store.append("acme", f"s/{n % 23}", [NewEvent("order.placed", {"n": n, "i": i})])
        await eventually(lambda: all(len(m.owned) == 4 for m in members), what="4 partitions each")
        for n in range(300):
            await store.append("acme", f"s/{n % 23}", [NewEvent("order.placed", {"n": n})])
        head = await store.head_position()
        await eventually(lambda: len(seen) == head, what="every event handled")
        gs = GroupStore(store, "acme", "g")

        async def at_head() -> bool:
            return await gs.low_watermark() >= head

        await eventually(at_head, what="checkpoints at the head")
        # each reader asked only for its member's partitions once the group settled
        readers = [m._reader for m in members]
        assert all(r.selection is not None and len(r.selection[1]) == 4 for r in readers)
    finally:
        for m in members:
            await m.stop()
        for s in stores:
            await s.close()
    page = await store.read_log("acme", after=0, limit=10_000)
    assert sorted(seen) == sorted(ev.id for ev in page.events)
