"""Several processes on one database: commit order, lost/duplicate events, kill -9."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncline.engine.events import NewEvent
from syncline.store import open_store

SCRIPT = str(Path(__file__).with_name("log_procs.py"))
pytestmark = pytest.mark.slow


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 90) -> list[str]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-2000:]
    return out.splitlines()


async def test_four_writers_two_tailing_readers_on_postgres(pg_clean_url):
    store = await open_store(pg_clean_url)  # migrate once before the crowd arrives
    await store.close()
    per_writer = 150
    expected = 4 * per_writer + 1  # + the slow writer; the rolled-back one adds nothing
    readers = [spawn("reader", pg_clean_url, str(expected)) for _ in range(2)]
    writers = [spawn("writer", pg_clean_url, str(per_writer), f"w{i}") for i in range(4)]
    slow = spawn("slow-writer", pg_clean_url, "slow")
    rollback = spawn("rollback-writer", pg_clean_url, "rb")
    acks = [line for p in writers + [slow] for line in finish(p) if line.startswith("ack")]
    assert any("failed" in line for line in finish(rollback))
    assert len(acks) == expected
    acked = {int(line.split()[1]) for line in acks}
    assert acked == set(range(1, expected + 1))  # gapless: the rollback left no hole
    for r in readers:
        got = [int(line.split()[1]) for line in finish(r) if line.startswith("got")]
        # never a position lower than one already received, nothing lost, nothing twice
        assert got == sorted(got) and len(got) == len(set(got))
        assert set(got) == acked
    store = await open_store(pg_clean_url)
    try:
        assert (await store.verify()).ok
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_writer_keeps_every_acknowledged_append(backend, request):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_clean_url")
    store = await open_store(url)
    await store.close()
    p = spawn("writer", url, "100000", "crash")
    acked: list[int] = []
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        line = await asyncio.to_thread(p.stdout.readline)
        if line.startswith("ack"):
            acked.append(int(line.split()[1]))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    acked += [int(line.split()[1]) for line in p.stdout.read().splitlines() if line.startswith("ack")]
    assert len(acked) >= 300
    store = await open_store(url)  # restart
    try:
        page = await store.read_log("acme", after=0, limit=10_000)
        present = {e.position for e in page.events}
        assert set(acked) <= present
        assert (await store.verify()).ok
        r = await store.append("acme", "w/after-crash", [NewEvent("test.written", {})])
        assert r.last_position == page.head + 1
    finally:
        await store.close()
