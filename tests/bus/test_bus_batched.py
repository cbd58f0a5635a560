"""Batched handlers (``batched=True``): a Batch holds consecutive events of one partition
in log order; deliveries settle one by one; failures go back through the per-event path
(attempts recorded, dead-letter queue unchanged); crash accounting still holds."""
from __future__ import annotations

import asyncio
import time
import zlib

from bus_helpers import eventually

from syncline.bus import Batch, RetryPolicy
from syncline.engine.events import NewEvent
from syncline.store.bus import GroupStore

FAST = RetryPolicy(retry_delay_s=0.01, ack_timeout_s=5.0)


async def _publish(store, n: int, streams: int, poison: set[int] = frozenset(), **extra) -> list[str]:
    ids = []
    for i in range(n):
        data = {"n": i, "poison": i in poison, **{k: v for k, v in extra.items() if i == v}}
        r = await store.append("acme", f"s/{i % streams}", [NewEvent("order.step", data)])
        ids.append(r.event_ids[0])
    return ids


async def _at_head(store, group: str) -> None:
    gs = GroupStore(store, "acme", group)
    head = await store.head_position()

    async def low() -> bool:
        return await gs.low_watermark() >= head

    await eventually(low, what="the checkpoints to reach the head")


async def test_batches_are_one_partition_in_log_order_and_every_event_is_handled(store, bus):
    ids = await _publish(store, 240, streams=12)
    batches: list[list] = []

    async def handler(batch: Batch):
        assert isinstance(batch, Batch)
        batches.append([(d.event.id, d.event.stream, d.event.position, d.attempt) for d in batch.deliveries])

    members = [await bus.group("g", handler, tenant="acme", partitions=4, batched=True, batch=50,
                               member_id=f"m{i}", policy=FAST, lease_s=2).start() for i in range(2)]
    try:
        await eventually(lambda: len({e[0] for b in batches for e in b}) == len(ids), what="every event handled")
        await _at_head(store, "g")
    finally:
        for m in members:
            await m.stop()
    assert max(len(b) for b in batches) > 1  # batching happened
    assert all(len(b) <= 50 for b in batches)
    seen_by_stream: dict[str, list[int]] = {}
    for b in batches:
        positions = [e[2] for e in b]
        assert positions == sorted(positions)  # log order inside a batch
        assert len({partition_of_stream(e[1], 4) for e in b}) == 1  # one partition per batch
        for _, stream, pos, attempt in b:
            assert attempt == 1
            seen_by_stream.setdefault(stream, []).append(pos)
    for stream, positions in seen_by_stream.items():  # per-stream order (first deliveries)
        firsts = list(dict.fromkeys(positions))
        assert firsts == sorted(firsts), stream
    assert sum(m.stats.handled for m in members) >= len(ids)


def partition_of_stream(stream: str, partitions: int) -> int:
    return zlib.crc32(f"acme\x00{stream}".encode()) % partitions  # as bus/events.partition_of


async def test_nack_with_delay_retries_that_event_alone_before_the_partition_moves_on(store, bus):
    ids = await _publish(store, 20, streams=1)
    calls: list[tuple[int, int, float, int]] = []  # (n, attempt, when, batch size)

    async def handler(batch: Batch):
        for d in batch.deliveries:
            calls.append((d.event.data["n"], d.attempt, time.monotonic(), len(batch)))
            if d.event.data["n"] == 5 and d.attempt == 1:
                d.nack("not yet", delay_s=0.3)
            # the rest are left unsettled: auto_ack acks them when the handler returns

    m = await bus.group("g", handler, tenant="acme", partitions=1, batched=True, batch=10, policy=FAST).start()
    try:
        await eventually(lambda: m.stats.handled == len(ids), what="every event acked")
        await _at_head(store, "g")
    finally:
        await m.stop()
    first = [c for c in calls if c[0] == 5 and c[1] == 1]
    second = [c for c in calls if c[0] == 5 and c[1] == 2]
    assert len(first) == 1 and len(second) == 1
    assert second[0][2] - first[0][2] >= 0.3  # the nack's delay was honoured
    assert second[0][3] == 1  # the retry came alone, through the per-event path
    # events after it in its batch were handled in the batch; the next chunk came after the retry
    assert [c[0] for c in calls if c[1] == 1 and c[0] in range(6, 10)] == [6, 7, 8, 9]
    after = [c for c in calls if c[0] >= 10]
    assert after and min(c[2] for c in after) >= second[0][2]
    assert m.stats.failed_attempts == 1 and m.stats.dead_lettered == 0


async def test_poison_event_reaches_the_dlq_after_max_attempts_and_others_are_acked(store, bus):
    ids = await _publish(store, 30, streams=3, poison={7})
    calls: list[tuple[int, int, int]] = []

    async def handler(batch: Batch):
        for d in batch.deliveries:
            calls.append((d.event.data["n"], d.attempt, len(batch)))
            if d.event.data["poison"]:
                raise ValueError("cannot digest 7")
            d.ack()

    m = await bus.group("g", handler, tenant="acme", partitions=1, batched=True, policy=FAST).start()
    try:
        await eventually(lambda: m.stats.dead_lettered == 1, what="the poison event dead-lettered")
        await eventually(lambda: m.stats.handled == len(ids) - 1, what="the rest handled")
        await _at_head(store, "g")
    finally:
        await m.stop()
    [entry] = await bus.dlq.query(scope="acme", group="g")
    assert entry.event_id == ids[7] and entry.attempts == 3
    assert "ValueError: cannot digest 7" in entry.reason and "Traceback" in entry.trace
    assert [a for n, a, _ in calls if n == 7] == [1, 2, 3]
    # the exception failed every delivery left unsettled in that batch (those after 7):
    # each was retried once, alone, and succeeded
    retried = sorted(n for n, a, size in calls if a == 2 and n != 7)
    assert retried == list(range(8, 30)) and all(size == 1 for n, a, size in calls if a > 1)
    assert m.stats.failed_attempts == 3 + len(retried)


async def test_ack_timeout_covers_the_whole_batch(store, bus):
    await _publish(store, 5, streams=1)
    calls: list[tuple[int, int]] = []

    async def handler(batch: Batch):
        for d in batch.deliveries:
            calls.append((d.event.data["n"], d.attempt))
        if len(batch) > 1:
            batch.deliveries[0].ack()  # the rest never settled: they time out together
        else:
            batch.ack_all()  # retries (alone) are acked

    policy = RetryPolicy(retry_delay_s=0.01, ack_timeout_s=0.3, auto_ack=False)
    m = await bus.group("g", handler, tenant="acme", partitions=1, batched=True, policy=policy).start()
    try:
        await eventually(lambda: m.stats.handled == 5, what="every event acked")
    finally:
        await m.stop()
    assert (0, 1) in calls and (0, 2) not in calls
    assert [n for n, a in calls if a == 2] == [1, 2, 3, 4]
    assert m.stats.failed_attempts == 4


async def test_attempts_cut_off_by_a_crash_count_for_batched_handlers(store, bus):
    """A member aborted (as a crash would) while its batched handler hangs: the next owner
    takes the suspect range one event at a time with recorded attempts, so the event that
    hangs reaches the dead-letter queue after 3 crashes."""
    stuck = asyncio.Event()
    calls: list[tuple[int, int, int]] = []

    async def handler(batch: Batch):
        for d in batch.deliveries:
            calls.append((d.event.data["n"], d.attempt, len(batch)))
            if d.event.data.get("hang"):
                stuck.set()
                await asyncio.Event().wait()

    ids = await _publish(store, 8, streams=2, hang=3)
    options = dict(tenant="acme", partitions=2, lease_s=0.6, batched=True)
    for crash in range(3):
        stuck.clear()
        m = await bus.group("g", handler, member_id=f"m{crash}", **options).start()
        await eventually(stuck.is_set, what=f"member {crash} to take the event")
        await m.abort()
    survivor = await bus.group("g", handler, member_id="m3", **options).start()
    try:
        await eventually(lambda: survivor.stats.dead_lettered == 1, what="the event to be dead-lettered")
        await _at_head(store, "g")
    finally:
        await survivor.stop()
    assert [a for n, a, _ in calls if n == 3] == [1, 2, 3]
    assert all(size == 1 for n, a, size in calls if n == 3 and a > 1)  # per-event path after a crash
    [entry] = await bus.dlq.query(scope="acme", group="g")
    assert entry.event_id == ids[3] and entry.attempts == 3 and "worker crashed" in entry.reason
    assert {n for n, _, _ in calls} == set(range(8))
