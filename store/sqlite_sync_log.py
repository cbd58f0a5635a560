"""The sync server's log (``engine.sync_server.SyncLog``) on a SQLite file, synchronously.

stdlib ``sqlite3`` for every read and write; the rows come from the store's own
planner (``store/planning.plan_batch`` over ``store/rows.prepare``), so versions,
positions, hash chain, tenants and stream heads are exactly what the async store
writes, and ``open_store("sqlite+aiosqlite:///<file>")`` opens and verifies the
file. The schema is created by the store's alembic migrations (through a
synchronous SQLAlchemy connection, once, when the file is new).
"""
from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from typing import Callable, Iterator, Sequence

from engine.events import RecordedEvent, StreamWrite

from .planning import Head, plan_batch
from .rows import READ_COLUMNS, WRITE_COLUMNS, decode_row, prepare

_INSERT_EVENT = f"INSERT INTO events ({', '.join(WRITE_COLUMNS)}) VALUES ({', '.join('?' * len(WRITE_COLUMNS))})"
_UPSERT_STREAM = (
    "INSERT INTO streams (tenant, stream, version, head_hash, anchor_version, anchor_hash, updated_us) "
    "VALUES (?, ?, ?, ?, 0, zeroblob(32), ?) ON CONFLICT (tenant, stream) DO UPDATE SET "
    "version = excluded.version, head_hash = excluded.head_hash, updated_us = excluded.updated_us"
)
_COLS = ", ".join(READ_COLUMNS)


def migrate(path: str) -> None:
    from sqlalchemy import create_engine

    from .migrate import _config

    from alembic import command

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            command.upgrade(_config(conn), "head")
            conn.commit()
    finally:
        engine.dispose()


class SqliteSyncLog:
    def __init__(self, path: str, new_id: Callable[[int], str], *, synchronous: str = "NORMAL") -> None:
        migrate(path)
        self._new_id = new_id
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")

    def append(self, tenant: str, writes: Sequence[StreamWrite], time_us: int) -> list[RecordedEvent]:
        # Ids are given here (from the injected source) so that a seeded run is reproducible.
        writes = [dataclasses.replace(w, events=tuple(
            e if e.id else dataclasses.replace(e, id=self._new_id(time_us // 1000)) for e in w.events))
            for w in writes]
        call = prepare(tenant, writes, None)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            position, head_time = db.execute("SELECT position, time_us FROM log_head WHERE id = 1").fetchone()
            names = [w.stream for w in call.writes]
            heads = {}
            q = f"SELECT stream, version, head_hash FROM streams WHERE tenant = ? AND stream IN ({', '.join('?' * len(names))})"
            for s, v, h in db.execute(q, [tenant, *names]):
                heads[(tenant, s)] = Head(v, h)
            time_us = max(time_us, head_time)
            plan = plan_batch([call], heads, {}, position, time_us)
            outcome = plan.outcomes[0]
            if isinstance(outcome, Exception):
                raise outcome
            db.executemany("INSERT OR IGNORE INTO tenants (id, created_us) VALUES (?, ?)",
                           [(t, time_us) for t in sorted(plan.tenants)])
            db.executemany(_INSERT_EVENT, [tuple(r[c] for c in WRITE_COLUMNS) for r in plan.rows])
            db.executemany(_UPSERT_STREAM, [(t, s, h.version, h.hash, time_us) for (t, s), h in plan.heads.items()])
            db.execute("UPDATE log_head SET position = ?, time_us = ? WHERE id = 1", (plan.last_position, time_us))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [decode_row(tuple(r[c] for c in READ_COLUMNS)) for r in plan.rows]

    def read(self, tenant: str, after: int, limit: int) -> list[RecordedEvent]:
        rows = self._db.execute(
            f"SELECT {_COLS} FROM events WHERE tenant = ? AND position > ? ORDER BY position LIMIT ?",
            (tenant, after, limit)).fetchall()
        return [decode_row(r) for r in rows]

    def count_after(self, tenant: str, after: int) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events WHERE tenant = ? AND position > ?",
                                (tenant, after)).fetchone()[0]

    def head(self) -> int:
        return self._db.execute("SELECT position FROM log_head WHERE id = 1").fetchone()[0]

    def replay(self) -> Iterator[RecordedEvent]:
        rows = self._db.execute(f"SELECT {_COLS} FROM events ORDER BY position").fetchall()
        return iter([decode_row(r) for r in rows])

    def log_hash(self) -> str:
        h = hashlib.sha256()
        for position, row_hash in self._db.execute("SELECT position, hash FROM events ORDER BY position"):
            h.update(position.to_bytes(8, "big"))
            h.update(row_hash)
        return h.hexdigest()

    def close(self) -> None:
        self._db.close()
