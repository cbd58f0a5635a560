"""The shared doorbell listener loop: subscribe, ring, go silent when the service drops,
reconnect with backoff, stop on close. First against a scripted backend, then the real
ones: a PostgreSQL LISTEN connection killed by the server, and a Redis server restarted."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess

import asyncpg
import pytest
from waiting import until

from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.doorbell_listener import ListeningDoorbell
from syncline.store.postgres import plain_dsn


class Lost(Exception):
    pass


class ScriptedDoorbell(ListeningDoorbell):
    """A backend driven by the test: each attempt takes the next outcome of ``script``."""

    _lost_errors = (Lost,)
    _first_delay_s = 0.01
    _max_delay_s = 0.04

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = list(script)  # "fail": _subscribe raises; "ok": subscribed until .drop is set
        self.attempts = 0
        self.unsubscribed = 0
        self.released = False
        self.messages: asyncio.Queue[int | None] = asyncio.Queue()
        self.sleeps: list[float] = []

    async def _subscribe(self) -> None:
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "fail":
            raise Lost("refused")

    async def _deliver(self) -> None:
        while (position := await self.messages.get()) is not None:
            self.ring_nowait(position)
        raise Lost("dropped")  # None: the service went away mid-subscription

    async def _unsubscribe(self) -> None:
        self.unsubscribed += 1

    async def _release(self) -> None:
        self.released = True


async def test_backoff_doubles_up_to_the_cap_and_resets_after_a_subscription(caplog):
    def delays() -> list[float]:  # from each "... lost (Lost); retrying in N s" warning
        return [r.args[2] for r in caplog.records if r.name == "syncline.store.doorbell"]

    caplog.set_level(logging.WARNING, "syncline.store.doorbell")
    bell = ScriptedDoorbell(["fail", "fail", "fail", "fail", "ok", "fail", "ok"])
    bell.start()
    try:
        await until(bell.connected.is_set, 5, "the fifth attempt to subscribe")
        assert delays() == [0.01, 0.02, 0.04, 0.04]
        bell.messages.put_nowait(None)  # dropped: retry soon (delay reset), fail once, then subscribe
        await until(lambda: bell.attempts == 7 and bell.connected.is_set(), 5, "the resubscription")
        assert delays()[4:] == [0.01, 0.02]
        assert bell.unsubscribed == 6  # every attempt, failed or dropped, released its connection
    finally:
        await bell.close()


async def test_rings_while_subscribed_goes_silent_when_dropped_and_rings_again_after():
    bell = ScriptedDoorbell(["ok"])
    bell.start()
    try:
        await until(bell.connected.is_set, 5, "subscription")
        bell.messages.put_nowait(3)
        assert await bell.wait(0, 5) and bell.latest == 3

        bell.messages.put_nowait(None)
        await until(lambda: bell.attempts == 2, 5, "a reconnect after the drop")
        await until(bell.connected.is_set, 5, "resubscription")
        bell.messages.put_nowait(5)
        assert await bell.wait(3, 5) and bell.latest == 5
    finally:
        await bell.close()


async def test_an_unexpected_error_ends_the_listener_silent():
    class Broken(ScriptedDoorbell):
        async def _subscribe(self) -> None:
            raise RuntimeError("a bug, not an outage")

    bell = Broken([])
    bell.start()
    try:
        await until(lambda: bell._task.done(), 5, "the listener to stop")
        assert not bell.connected.is_set() and bell.attempts == 0 and bell.unsubscribed == 1
    finally:
        await bell.close()


async def test_close_stops_the_loop_releases_and_wakes_waiters():
    bell = ScriptedDoorbell(["ok"])
    bell.start()
    await until(bell.connected.is_set, 5, "subscription")
    waiter = asyncio.create_task(bell.wait(0, 30))
    await asyncio.sleep(0)
    await bell.close()
    assert await waiter is False
    assert bell._task.done() and bell.unsubscribed == 1 and bell.released
    assert not bell.connected.is_set()


# ---------------------------------------------------------------------- real services


async def _append_wakes(writer, reader) -> None:
    """An append in ``writer`` reaches ``reader``'s doorbell (not its 30 s poll)."""
    before = reader.doorbell.latest
    await writer.append("acme", "bell/1", [NewEvent("bell.rang", {})])
    assert await reader.doorbell.wait(before, 5), "no ring reached the other store"


async def test_pg_listener_reconnects_after_the_server_ends_its_connection(pg_clean_url):
    a = await open_store(pg_clean_url, poll_interval_s=30, listen=False)
    b = await open_store(pg_clean_url, poll_interval_s=30)
    admin = await asyncpg.connect(plain_dsn(pg_clean_url))
    try:
        bell = b.doorbell
        await asyncio.wait_for(bell.connected.wait(), 5)
        await _append_wakes(a, b)
        old = bell._conn
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old.get_server_pid())
        await until(lambda: not bell.connected.is_set() or bell._conn is not old, 5, "the listener to notice")
        await until(lambda: bell.connected.is_set() and bell._conn is not old, 10, "a new LISTEN connection")
        assert old.is_closed()
        await _append_wakes(a, b)
    finally:
        await admin.close()
        await a.close()
        await b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int) -> subprocess.Popen:
    binary = os.environ.get("SYNCLINE_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("redis-server not found (make test installs it)")
        pytest.skip("redis-server not found")
    return subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.redis
async def test_redis_doorbell_survives_a_redis_restart(sqlite_url):
    # A private Redis: the suite's shared one must not be stopped under other tests.
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis_server(port)
    a = b = None
    try:
        a = await open_store(sqlite_url, redis_url=url, poll_interval_s=30)
        b = await open_store(sqlite_url, redis_url=url, poll_interval_s=30)
        await until(b.doorbell.connected.is_set, 10, "the subscription to the private Redis")
        await _append_wakes(a, b)

        server.terminate()
        server.wait(10)
        await until(lambda: not b.doorbell.connected.is_set(), 10, "the listener to go silent")
        # while Redis is down the store still accepts writes (publishing fails quietly)
        assert (await a.append("acme", "bell/1", [NewEvent("bell.rang", {})])).last_position == 2

        server = _redis_server(port)  # same port: the listener reconnects by itself
        await until(b.doorbell.connected.is_set, 15, "the listener to resubscribe")
        # ``a``'s publisher still holds a pooled connection to the old server; its first
        # publish after the restart must still arrive (it reconnects and retries once).
        last = (await a.append("acme", "bell/1", [NewEvent("bell.rang", {})])).last_position
        assert await b.doorbell.wait(last - 1, 5) and b.doorbell.latest == last
    finally:
        for s in (a, b):
            if s is not None:
                await s.close()
        server.terminate()
        server.wait(10)
