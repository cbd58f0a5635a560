"""WAL checkpoints run beside the SQLite writer (store/sqlite_checkpointer.py).

The writer turns SQLite's automatic checkpoints off, so these tests check that
someone still checkpoints: the WAL is copied back into the database file, the
log reads the same from a fresh connection, and a checkpointer that cannot run
hands the job back to SQLite."""
from __future__ import annotations

import sqlite3
import threading
import time

from waiting import until

from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.sqlite_checkpointer import WalCheckpointer


async def test_appends_are_checkpointed_in_the_background(sqlite_url):
    path = sqlite_url.split("///", 1)[1]
    store = await open_store(sqlite_url)
    try:
        for i in range(60):
            await store.append("acme", f"t/{i % 7}", [NewEvent("x.Happened", {"i": i})])
        checkpointer = store._writer._checkpointer
        assert checkpointer is not None
        await until(lambda: checkpointer.rounds >= 1, 5, "a checkpoint round")
        busy, log, _ = checkpointer.last_result
        assert busy == 0 and log > 0
        await until(lambda: checkpointer.last_result[1] == checkpointer.last_result[2], 5, "the whole WAL checkpointed")
    finally:
        await store.close()
    # Closing leaves nothing behind that only the WAL holds.
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert ro.execute("SELECT count(*) FROM events").fetchone()[0] == 60
    finally:
        ro.close()


def test_a_checkpointer_that_cannot_open_the_file_says_so(tmp_path):
    cp = WalCheckpointer(str(tmp_path / "no" / "such" / "dir" / "x.db"), interval_s=0.01)
    try:
        cp._thread.join(timeout=5)  # it gives up at once: the directory does not exist
        assert cp.committed() is False
    finally:
        cp.close()


async def test_writer_hands_checkpoints_back_to_sqlite_when_the_checkpointer_fails(sqlite_url):
    store = await open_store(sqlite_url)
    try:
        await store.append("acme", "t/1", [NewEvent("x.Happened", {"i": 0})])
        writer = store._writer
        writer._checkpointer.close()  # a stopped checkpointer, as if its thread had died
        await store.append("acme", "t/1", [NewEvent("x.Happened", {"i": 1})])
        assert writer._checkpointer is None
        assert writer._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        await store.append("acme", "t/1", [NewEvent("x.Happened", {"i": 2})])
        page = await store.read_log("acme", after=0, limit=10)
        assert [e.data["i"] for e in page.events] == [0, 1, 2]
    finally:
        await store.close()


def test_close_while_a_round_is_waiting_returns_at_once(tmp_path):
    """close() during the gathering pause must stop the thread, not leave it waiting."""
    path = str(tmp_path / "x.db")
    sqlite3.connect(path).close()
    cp = WalCheckpointer(path, interval_s=5)
    in_pause = threading.Event()

    class NotedStop(threading.Event):
        def wait(self, timeout=None):
            if timeout is not None:
                in_pause.set()  # the thread is in its pause before a round
            return super().wait(timeout)

    cp._stop = NotedStop()  # before the first commit: the thread has not used it yet
    cp.committed()
    assert in_pause.wait(5)
    t0 = time.monotonic()
    cp.close()
    assert time.monotonic() - t0 < 2
    assert not cp._thread.is_alive()
