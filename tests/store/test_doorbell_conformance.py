"""The doorbell port, one suite for every adapter: in-process, PostgreSQL LISTEN/NOTIFY, Redis.

A doorbell says "the log grew past position P". Whatever the adapter, a waiter after P
wakes when a ring passes P (from this store or, for the cross-process ones, another),
a ring at or below P does not wake it, a ring that came before the wait is remembered,
and a silent doorbell costs a timeout, never a hang.
"""
from __future__ import annotations

import asyncio

import pytest
from waiting import until

from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.doorbell import LocalDoorbell


@pytest.fixture(params=["local", "pg-notify", "redis"])
async def stores(request, tmp_path):
    """(writer, reader): two stores on one log; for "local" the same store twice."""
    kind = request.param
    if kind == "local":
        s = await open_store(f"sqlite+aiosqlite:///{tmp_path}/bell.db", poll_interval_s=30)
        assert isinstance(s.doorbell, LocalDoorbell)
        yield kind, s, s
        await s.close()
        return
    if kind == "pg-notify":
        url = request.getfixturevalue("pg_clean_url")
        a, b = await open_store(url, poll_interval_s=30), await open_store(url, poll_interval_s=30)
    else:
        redis = request.getfixturevalue("redis_client_url")
        url = f"sqlite+aiosqlite:///{tmp_path}/bell.db"
        a = await open_store(url, redis_url=redis, poll_interval_s=30)
        b = await open_store(url, redis_url=redis, poll_interval_s=30)
    await asyncio.wait_for(b.doorbell.connected.wait(), 5)
    yield kind, a, b
    await a.close()
    await b.close()


async def test_an_append_wakes_a_waiter_past_its_position(stores):
    _, writer, reader = stores
    head = await reader.head_position()
    waiter = asyncio.create_task(reader.doorbell.wait(head, 10))
    await until(lambda: reader.doorbell._waiters, 10, "the wait to be parked")
    assert not waiter.done()
    await writer.append("acme", "bell/1", [NewEvent("bell.rang", {})])
    assert await asyncio.wait_for(waiter, 5) is True


async def test_a_silent_doorbell_times_out(stores):
    _, _, reader = stores
    head = await reader.head_position()
    assert await reader.doorbell.wait(head + 1000, 0.2) is False


async def test_a_ring_at_or_below_the_position_does_not_wake(stores):
    _, writer, reader = stores
    await writer.append("acme", "bell/1", [NewEvent("bell.rang", {})])
    head = await reader.head_position()
    await writer.doorbell.ring("acme", head)  # the same position again
    assert await reader.doorbell.wait(head, 0.3) is False


async def test_a_ring_before_the_wait_is_remembered(stores):
    _, writer, reader = stores
    before = await reader.head_position()
    await writer.append("acme", "bell/1", [NewEvent("bell.rang", {})])
    # (cross-process: delivered shortly)
    await until(lambda: getattr(reader.doorbell, "latest", 0) > before, 5, "the ring to arrive")
    assert await asyncio.wait_for(reader.doorbell.wait(before, 10), 0.5) is True
