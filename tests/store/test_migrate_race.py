"""Several processes starting at once on a new SQLite file all come up (found by the
multi-process realtime suite: one used to die with "table bus_groups already exists")."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPEN = """
import asyncio, sys
from syncline.store import open_store
async def main():
    s = await open_store(sys.argv[1])
    await s.close()
asyncio.run(main())
"""


def test_concurrent_first_starts_on_one_sqlite_file(tmp_path):
    for attempt in range(3):
        url = f"sqlite+aiosqlite:///{tmp_path}/race{attempt}.db"
        procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        failures = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            if p.returncode != 0:
                failures.append(err[-500:])
        assert not failures, failures


def test_a_starting_process_waits_for_the_one_migrating(tmp_path):
    """The mechanism behind the fix: while one process migrates (holds the lock beside
    the file), another one starting on the same file waits instead of migrating too."""
    import fcntl
    import time

    db = tmp_path / "held.db"
    with open(f"{db}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-c", OPEN, f"sqlite+aiosqlite:///{db}"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        still_waiting = p.poll() is None
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    out, err = p.communicate(timeout=60)
    assert still_waiting, "the second process migrated while the first held the lock"
    assert p.returncode == 0, err[-500:]
