"""The sync server's log (``engine.sync_server.SyncLog``) on a SQLite file, synchronously.

stdlib ``sqlite3`` for every read and write; every append is prepared and planned by
the log kernel (engine/logkernel.py) with the store's packer, as the store's writers
and store/memory_sync_log.MemorySyncLog do, so versions, positions, hash chain,
idempotency keys, conflicts, tenants and stream heads are exactly what the async
store writes, and ``open_store("sqlite+aiosqlite:///<file>")`` opens and verifies the
file. The schema is created by the store's alembic migrations (through a
synchronous SQLAlchemy connection, once, when the file is new).

A wrong ``expected_version`` raises ``ConcurrencyError``; a repeated idempotency key
returns the events the first append recorded (read back) and writes nothing.
"""
from __future__ import annotations

import sqlite3
from typing import Callable, Iterator, Sequence

from syncline.engine.events import RecordedEvent, StreamWrite
from syncline.engine.logkernel import Head, IdSource, id_source, log_digest, plan_one

from .bus_schema import partition_key
from .rows import (
    DEFAULT_MAX_PAYLOAD,
    READ_COLUMNS,
    WRITE_COLUMNS,
    _pack,
    decode_rows,
    new_event_ids,
    prepare,
)

# ... and the bus's partition key (migration 0006, store/bus_schema.partition_key)
_INSERT_EVENT = (f"INSERT INTO events ({', '.join(WRITE_COLUMNS)}, pkey) "
                 f"VALUES ({', '.join('?' * len(WRITE_COLUMNS))}, ?)")
_UPSERT_STREAM = (
    "INSERT INTO streams (tenant, stream, version, head_hash, anchor_version, anchor_hash, updated_us) "
    "VALUES (?, ?, ?, ?, 0, zeroblob(32), ?) ON CONFLICT (tenant, stream) DO UPDATE SET "
    "version = excluded.version, head_hash = excluded.head_hash, updated_us = excluded.updated_us"
)
_COLS = ", ".join(READ_COLUMNS)
_READ_WIDTH = len(READ_COLUMNS)  # a planned row (WRITE_COLUMNS) starts with READ_COLUMNS


def migrate(path: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from .migrate import _config

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            command.upgrade(_config(conn), "head")
            conn.commit()
    finally:
        engine.dispose()


class SqliteSyncLog:
    def __init__(self, path: str, new_id: Callable[[int], str] | None = None, *, synchronous: str = "NORMAL",
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        """``new_id(time_ms)`` numbers the events that did not choose their id, one call
        per id in event order (a seeded run is reproducible); by default, fresh UUIDv7s
        from the OS's randomness."""
        if path != ":memory:":
            from .sqlite import create_private

            create_private(path)
        migrate(path)
        self._new_ids: IdSource = new_event_ids if new_id is None else id_source(new_id)
        self._max_payload = max_payload
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")

    def append(
        self, tenant: str, writes: Sequence[StreamWrite], time_us: int, *, idempotency_key: str | None = None
    ) -> list[RecordedEvent]:
        """Atomically append; the recorded events in position order (for a repeated
        idempotency key, the first append's, and nothing is written)."""
        call = prepare(tenant, writes, idempotency_key, self._max_payload)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            position, head_time = db.execute("SELECT position, time_us FROM log_head WHERE id = 1").fetchone()
            names = [w.stream for w in call.writes]
            heads = {}
            q = (
                "SELECT stream, version, head_hash FROM streams "
                f"WHERE tenant = ? AND stream IN ({', '.join('?' * len(names))})"
            )
            for s, v, h in db.execute(q, [tenant, *names]):
                heads[(tenant, s)] = Head(v, h)
            stored = {}
            if idempotency_key is not None:
                for fp, res in db.execute("SELECT fingerprint, result FROM idempotency WHERE tenant = ? AND key = ?",
                                          (tenant, idempotency_key)):
                    stored[(tenant, idempotency_key)] = (fp, res)
            time_us = max(time_us, head_time)
            plan, result = plan_one(call, heads, stored, position, time_us, new_ids=self._new_ids, pack=_pack)
            if result.duplicate:
                db.execute("COMMIT")
                return self._between(result.first_position, result.last_position)
            db.executemany("INSERT OR IGNORE INTO tenants (id, created_us) VALUES (?, ?)",
                           [(t, time_us) for t in sorted(plan.tenants)])
            db.executemany(_INSERT_EVENT, [(*row, partition_key(row[2], row[3])) for row in plan.values])
            db.executemany(_UPSERT_STREAM, [(t, s, h.version, h.hash, time_us) for (t, s), h in plan.heads.items()])
            db.execute("UPDATE log_head SET position = ?, time_us = ? WHERE id = 1", (plan.last_position, time_us))
            if plan.new_keys:
                db.executemany(
                    "INSERT INTO idempotency (tenant, key, fingerprint, result, created_us) VALUES (?, ?, ?, ?, ?)",
                    [(k["tenant"], k["key"], k["fingerprint"], k["result"], k["created_us"]) for k in plan.new_keys],
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return decode_rows([v[:_READ_WIDTH] for v in plan.values])

    def _between(self, first: int, last: int) -> list[RecordedEvent]:
        rows = self._db.execute(f"SELECT {_COLS} FROM events WHERE position BETWEEN ? AND ? ORDER BY position",
                                (first, last)).fetchall()
        return decode_rows(rows)

    def read(self, tenant: str, after: int, limit: int) -> list[RecordedEvent]:
        rows = self._db.execute(
            f"SELECT {_COLS} FROM events WHERE tenant = ? AND position > ? ORDER BY position LIMIT ?",
            (tenant, after, limit)).fetchall()
        return decode_rows(rows)

    def count_after(self, tenant: str, after: int) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events WHERE tenant = ? AND position > ?",
                                (tenant, after)).fetchone()[0]

    def head(self) -> int:
        return self._db.execute("SELECT position FROM log_head WHERE id = 1").fetchone()[0]

    def replay(self) -> Iterator[RecordedEvent]:
        rows = self._db.execute(f"SELECT {_COLS} FROM events ORDER BY position").fetchall()
        return iter(decode_rows(rows))

    def log_hash(self) -> str:
        return log_digest(self._db.execute("SELECT position, hash FROM events ORDER BY position"))

    def close(self) -> None:
        self._db.close()
