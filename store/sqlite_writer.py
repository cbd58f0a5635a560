"""The SQLite write path: one thread, one stdlib sqlite3 connection, one hop per batch.

A group commit runs entirely inside the writer thread (lock, read heads, plan,
executemany, commit), so a batch costs one thread hop instead of one per statement.
Reads and admin work stay on SQLAlchemy (store/sql.py).
"""
from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from sqlalchemy.engine import make_url

from .bus_schema import partition_key
from .planning import BatchPlan, Head, StreamKey, plan_batch
from .rows import WRITE_COLUMNS, PreparedAppend
from .sqlite import BUSY_TIMEOUT_MS
from .sqlite_checkpointer import WalCheckpointer

# clock and meta (usually absent) are bound as an empty blob and stored as NULL: see _bound.
_NULLABLE = ("clock", "meta")
_MARKS = ", ".join("NULLIF(?, x'')" if c in _NULLABLE else "?" for c in WRITE_COLUMNS)
# ... and the bus's partition key (migration 0006), computed per stream in _bound
_INSERT_EVENT = f"INSERT INTO events ({', '.join(WRITE_COLUMNS)}, pkey) VALUES ({_MARKS}, ?)"
_UPSERT_STREAM = (
    "INSERT INTO streams (tenant, stream, version, head_hash, anchor_version, anchor_hash, updated_us) "
    "VALUES (?, ?, ?, ?, 0, zeroblob(32), ?) ON CONFLICT (tenant, stream) DO UPDATE SET "
    "version = excluded.version, head_hash = excluded.head_hash, updated_us = excluded.updated_us"
)


_UPDATE_STREAM = "UPDATE streams SET version = ?, head_hash = ?, updated_us = ? WHERE tenant = ? AND stream = ?"

_MAX_KNOWN_HEADS = 100_000


class SqliteBatchWriter:
    def __init__(self, url: str, synchronous: str = "NORMAL") -> None:
        self._path = make_url(url).database
        self._synchronous = synchronous
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncline-sqlite-writer")
        self._db: sqlite3.Connection | None = None
        self._heads: dict[StreamKey, Head] = {}  # stream heads as of log position _heads_at
        self._heads_at: int | None = None
        self._checkpointer: WalCheckpointer | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # Checkpoints run beside the writer, not inside its commits (sqlite_checkpointer.py).
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = WalCheckpointer(self._path)
            self._db = db
        return self._db

    async def commit(self, calls: list[PreparedAppend], clock_us: Callable[[], int]) -> BatchPlan:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._commit_sync, calls, clock_us)

    def _commit_sync(self, calls: list[PreparedAppend], clock_us: Callable[[], int]) -> BatchPlan:
        db = self._connect()
        # BEGIN IMMEDIATE takes SQLite's single write lock now, before log_head is read,
        # so across processes positions are assigned and committed one writer at a time.
        db.execute("BEGIN IMMEDIATE")
        try:
            position, head_time = db.execute("SELECT position, time_us FROM log_head WHERE id = 1").fetchone()
            heads = self._read_heads(db, calls, position)
            keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
            for tenant, names in _group(calls, lambda c: [c.idempotency_key] if c.idempotency_key else []).items():
                q = f"SELECT key, fingerprint, result FROM idempotency WHERE tenant = ? AND key IN ({_marks(names)})"
                for k, fp, res in db.execute(q, [tenant, *names]):
                    keys[(tenant, k)] = (fp, res)
            time_us = max(clock_us(), head_time)
            plan = plan_batch(calls, heads, keys, position, time_us)
            if plan.values:
                db.executemany(
                    "INSERT OR IGNORE INTO tenants (id, created_us) VALUES (?, ?)", [(t, time_us) for t in plan.tenants]
                )
                db.executemany(_INSERT_EVENT, _bound(plan.values))
                # Streams that had a head get an UPDATE by primary key; only new ones an
                # INSERT. (An upsert of every stream tried the insert first: about a third
                # more time in this statement.) ``heads`` holds every existing stream of
                # the batch, read in this transaction or known from our last commit.
                updated = [(h.version, bytearray(h.hash), time_us, t, s)
                           for (t, s), h in plan.heads.items() if (t, s) in heads]
                if updated:
                    db.executemany(_UPDATE_STREAM, updated)
                if len(updated) < len(plan.heads):
                    db.executemany(
                        _UPSERT_STREAM,
                        [(t, s, h.version, bytearray(h.hash), time_us)
                         for (t, s), h in plan.heads.items() if (t, s) not in heads],
                    )
                db.execute("UPDATE log_head SET position = ?, time_us = ? WHERE id = 1", (plan.last_position, time_us))
            if plan.new_keys:
                db.executemany(
                    "INSERT INTO idempotency (tenant, key, fingerprint, result, created_us) VALUES (?, ?, ?, ?, ?)",
                    [(k["tenant"], k["key"], k["fingerprint"], k["result"], k["created_us"]) for k in plan.new_keys],
                )
            db.execute("COMMIT")
        except BaseException:
            self._heads_at = None  # whatever happened, read the heads again next time
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._heads.update(plan.heads)
        self._heads_at = plan.last_position
        cp = self._checkpointer
        if cp is not None and plan.values and not cp.committed():
            db.execute("PRAGMA wal_autocheckpoint=1000")  # SQLite's default: it checkpoints again
            self._checkpointer = None
        return plan

    def _read_heads(self, db: sqlite3.Connection, calls: list[PreparedAppend], position: int) -> dict[StreamKey, Head]:
        """The current heads of the batch's streams that exist.

        Heads this writer committed are remembered: every append moves log_head, so if
        the log head is still where our last commit left it, nobody (no other process,
        no failed batch) has changed any stream since, and only streams we have not seen
        are read. Otherwise everything is read again."""
        known = self._heads
        if position != self._heads_at or len(known) > _MAX_KNOWN_HEADS:
            known.clear()
        heads: dict[StreamKey, Head] = {}
        missing: dict[str, set[str]] = {}
        for c in calls:
            tenant = c.tenant
            for w in c.writes:
                key = (tenant, w.stream)
                h = known.get(key)
                if h is not None:
                    heads[key] = h
                else:
                    missing.setdefault(tenant, set()).add(w.stream)
        for tenant, names in missing.items():
            names_ = sorted(names)
            q = f"SELECT stream, version, head_hash FROM streams WHERE tenant = ? AND stream IN ({_marks(names_)})"
            for s, v, h in db.execute(q, [tenant, *names_]):
                heads[(tenant, s)] = Head(v, h)
        return heads

    async def close(self) -> None:
        def _close() -> None:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, _close)
        self._pool.shutdown(wait=True)


_NO_BLOB = bytearray()


def _bound(values: list[tuple]) -> list[tuple]:
    """The events rows as bound: blobs as bytearray, absent clock/meta as an empty one.

    CPython 3.11's sqlite3 binds int, str and bytearray directly, but sends bytes and
    None through its adapter lookup, which raises and clears an AttributeError per
    value (about 0.6 µs each; five per row cost more than the rest of the row).
    The stored values are the same: the same bytes, and NULL (NULLIF in _INSERT_EVENT;
    an encoded clock or meta is never empty)."""
    empty = _NO_BLOB
    keys: dict[tuple[str, str], int] = {}  # the bus's partition key, once per stream
    return [
        (p, i, t, s, v, ty, sc, tm, au, ac, bytearray(clock) if clock else empty, bytearray(payload),
         bytearray(meta) if meta else empty, r, bytearray(prev), bytearray(h),
         keys.get((t, s)) or keys.setdefault((t, s), partition_key(t, s)))
        for (p, i, t, s, v, ty, sc, tm, au, ac, clock, payload, meta, r, prev, h) in values
    ]


def _group(calls: list[PreparedAppend], pick) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for c in calls:
        for name in pick(c):
            out.setdefault(c.tenant, set()).add(name)
    return {t: sorted(v) for t, v in out.items()}


def _marks(names: list[str]) -> str:
    return ", ".join("?" * len(names))
