"""WAL checkpoints for the SQLite writer, on their own thread and connection.

In WAL mode each commit appends pages to the ``-wal`` file; a checkpoint copies them
back into the database file and syncs both. By default SQLite runs that checkpoint
inside the commit that pushes the WAL past 1,000 pages, on the committing
connection: our writer thread then stops taking batches while pages are copied and
the files are synced. Measured on the append benchmark (32 tasks, one event per
call) those checkpoints were about an eighth of the time.

So the writer connection turns automatic checkpoints off and ``WalCheckpointer``
runs them beside it: after commits, at most every ``interval_s``, it runs a
PASSIVE checkpoint on its own connection (PASSIVE never waits for a lock and never
blocks the writer or readers; frames still needed by a reader stay for the next
round). The sqlite3 module releases the GIL while SQLite works, so the copying and
syncing overlap the writer's next batches on another core. Nothing about
durability changes: a commit is durable once it is in the WAL, whoever checkpoints.

While a reader holds an old snapshot for a long time, the WAL grows, exactly as it
would with SQLite's own (also PASSIVE) automatic checkpoints. If the checkpointer
cannot run at all (its thread could not open the file), ``committed`` says so and
the writer hands checkpoints back to SQLite.
"""
from __future__ import annotations

import sqlite3
import threading

from .sqlite import BUSY_TIMEOUT_MS


class WalCheckpointer:
    """Checkpoints one SQLite database file in the background while commits signal it."""

    def __init__(self, path: str, *, interval_s: float = 0.05) -> None:
        self._path = path
        self._interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.rounds = 0  # observability: checkpoints run
        self.last_result: tuple[int, int, int] | None = None  # (busy, wal frames, frames checkpointed)
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="syncline-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> bool:
        """Called by the writer after each commit: a checkpoint is due within ``interval_s``.

        False when the checkpointer is not running: then nobody checkpoints but SQLite."""
        self._wake.set()
        return self._thread.is_alive() and not self.failed

    failed = False

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error:
            self.failed = True
            return
        try:
            while not self._stop.is_set():
                self._wake.wait()  # close() sets it too
                # Let commits gather first: one checkpoint per interval copies each
                # page once, however many commits wrote it meanwhile.
                if self._stop.wait(self._interval_s):
                    break
                self._wake.clear()
                self._checkpoint(db)
        finally:
            self._checkpoint(db)  # leave as little WAL as we can behind us
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # A busy or failing checkpoint loses nothing: the frames stay in the WAL
            # and the next round (or SQLite itself, when the file is next opened) copies them.
            self.errors += 1
            return
        self.rounds += 1
        self.last_result = tuple(row) if row is not None else None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
