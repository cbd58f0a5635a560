"""Members in one process share one log reader per (store, scope, filter)."""
from __future__ import annotations

import asyncio
from collections import defaultdict

from bus_helpers import eventually

from syncline.bus import reader as reader_mod
from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.filters import EventFilter


async def test_members_of_groups_in_one_process_share_one_reader(store, bus):
    reads: list = []
    real_read_log = store.read_log

    async def counting_read_log(*args, **kwargs):
        reads.append(kwargs.get("filter"))
        return await real_read_log(*args, **kwargs)

    store.read_log = counting_read_log
    seen: dict[str, list] = defaultdict(list)

    def collect(name):
        async def h(d):
            seen[name].append((d.event.stream, d.event.version, d.member))
        return h

    g1 = [bus.group("g1", collect("g1"), tenant="acme", partitions=8, member_id=f"a{i}") for i in range(3)]
    g2 = bus.group("g2", collect("g2"), tenant="acme", partitions=4)
    g3 = bus.group("g3", collect("g3"), tenant="acme", partitions=4, filter=EventFilter(stream_prefixes=("order/1",)))
    members = [*g1, g2, g3]
    for m in members:
        await m.start()
    try:
        assert len({id(m._reader) for m in [*g1, g2]}) == 1  # one reader for one scope and filter
        assert g3._reader is not g1[0]._reader  # another filter reads its own slice
        for b in range(10):
            await store.append_many("acme", [
                StreamWrite(f"order/{s}", tuple(NewEvent("order.step", {"b": b}) for _ in range(2))) for s in range(10)
            ])
        await eventually(lambda: len(seen["g1"]) == 200 and len(seen["g2"]) == 200 and len(seen["g3"]) == 20,
                         what="every group to handle its events")
        for name in ("g1", "g2"):
            by_stream = defaultdict(list)
            for stream, version, _ in seen[name]:
                by_stream[stream].append(version)
            assert all(v == list(range(1, 21)) for v in by_stream.values()), name  # once each, in order
        assert {s for s, _, _ in seen["g3"]} == {"order/1"}
        # only the readers read the log: one read serves the four unfiltered members (the
        # reader may have one read under way that it has not counted yet)
        shared = g1[0]._reader
        assert shared.pages <= reads.count(None) <= shared.pages + 1
    finally:
        for m in members:
            await m.stop()
    assert not reader_mod._readers.get(asyncio.get_running_loop())  # detached readers are gone


async def test_a_reader_at_the_head_waits_for_the_doorbell_instead_of_reading_again(store, bus):
    # After a page that reached the head it read at, the reader waits for the log to grow:
    # one read per append, not a second (empty) read after each (bus/reader.py).
    store.poll_interval_s = 30.0  # no poll wakeups during the test: only the doorbell
    handled: list[int] = []

    async def h(d):
        handled.append(d.event.position)

    m = await bus.group("quiet", h, tenant="acme", partitions=4, member_id="q", lease_s=90.0).start()
    try:
        # Start-up: every claim resets the reader (a rewind and a read); wait until all four
        # partitions are claimed and the read after the last reset is done.
        await eventually(lambda: len(m.owned) == 4 and m._reader is not None and m._reader.pages >= 1
                         and not m._reader._reset, what="the start-up reads to settle")
        before = m._reader.pages
        appends = 12
        for n in range(appends):
            await store.append("acme", f"s/{n % 3}", [NewEvent("a.b", {"n": n})])
            await eventually(lambda: len(handled) == n + 1, what=f"event {n} handled")
        assert m._reader.pages - before <= appends + 1
    finally:
        await m.stop()
