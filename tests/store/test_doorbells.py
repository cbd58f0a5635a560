"""Cross-process doorbells wake tails fast; when they are silent, tails still poll."""
from __future__ import annotations

import asyncio
import time

import pytest
from waiting import until

from syncline.engine.events import NewEvent
from syncline.store import open_store


async def _wake_latency(writer, reader_store) -> float:
    """Time from an append in ``writer`` to the tail of ``reader_store`` seeing it."""
    got = asyncio.Event()

    async def tail():
        async for page in reader_store.tail("acme", after=await reader_store.head_position()):
            if page.events:
                got.set()
                return

    task = asyncio.create_task(tail())
    # (every doorbell is a LocalDoorbell: a parked wait is one of its waiters; the tail
    # polls only every 30 s here)
    await until(lambda: reader_store.doorbell._waiters, 10, "the tail to wait on the doorbell")
    t0 = time.monotonic()
    await writer.append("acme", "bell/1", [NewEvent("bell.rang", {})])
    await asyncio.wait_for(got.wait(), 10)
    await task
    return time.monotonic() - t0


async def test_pg_notify_wakes_a_tail_in_another_store(pg_clean_url):
    a = await open_store(pg_clean_url, poll_interval_s=30)
    b = await open_store(pg_clean_url, poll_interval_s=30)
    try:
        await asyncio.wait_for(b.doorbell.connected.wait(), 5)
        assert await _wake_latency(a, b) < 2.0
    finally:
        await a.close()
        await b.close()


async def test_redis_doorbell_wakes_a_tail_in_another_store(sqlite_url, redis_client_url):
    a = await open_store(sqlite_url, redis_url=redis_client_url, poll_interval_s=30)
    b = await open_store(sqlite_url, redis_url=redis_client_url, poll_interval_s=30)
    try:
        await asyncio.wait_for(b.doorbell.connected.wait(), 5)
        assert await _wake_latency(a, b) < 2.0
    finally:
        await a.close()
        await b.close()


async def test_dead_redis_degrades_to_polling(sqlite_url):
    # nothing listens on this port: publishing fails quietly, the tail polls
    a = await open_store(sqlite_url, redis_url="redis://127.0.0.1:1/0", poll_interval_s=0.2)
    b = await open_store(sqlite_url, redis_url="redis://127.0.0.1:1/0", poll_interval_s=0.2)
    try:
        assert await _wake_latency(a, b) < 5.0
        r = await a.append("acme", "bell/1", [NewEvent("bell.rang", {})])
        assert r.last_position == 2
    finally:
        await a.close()
        await b.close()


async def test_a_wait_cancelled_in_the_turn_the_bell_rings_ends_cancelled():
    """On Python 3.11 ``asyncio.wait_for`` returned the result of a future completed in
    the same turn as a cancel, and the cancel was lost: a tail cancelled just as the bell
    rang kept looping, and the gateway's shutdown hung on it (15 s per test gateway)."""
    from syncline.store.doorbell import LocalDoorbell

    bell = LocalDoorbell()
    waits = 0

    async def tail() -> None:
        nonlocal waits
        while True:
            waits += 1
            await bell.wait(bell.latest, 60)

    task = asyncio.create_task(tail())
    while not bell._waiters:  # (it has reached its wait)
        await asyncio.sleep(0)
    bell.ring_nowait(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert waits == 1
