"""The PostgreSQL write path: a group commit in four round trips on the asyncpg driver.

SQLAlchemy owns the pool; the writer borrows the raw asyncpg connection of one pooled
connection, because a batch must be: BEGIN, lock, read heads, one statement that
writes everything, COMMIT. Issued as compiled SQLAlchemy constructs the same batch
cost about eight round trips and most of the CPU (measured in benchmarks/store_append.py).
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from .planning import BatchPlan, Head, plan_batch
from .rows import WRITE_COLUMNS, PreparedAppend

PG_NOTIFY_CHANNEL = "syncline_log"

_EVENT_TYPES = (
    "bigint", "text", "text", "text", "int", "text", "smallint", "bigint", "text",
    "text", "bytea", "bytea", "bytea", "text", "bytea", "bytea",
)
_N = len(WRITE_COLUMNS)
_WRITE_ALL = f"""
WITH ins AS (
    INSERT INTO events ({', '.join(WRITE_COLUMNS)})
    SELECT * FROM unnest({', '.join(f'${i + 1}::{t}[]' for i, t in enumerate(_EVENT_TYPES))})
), st AS (
    INSERT INTO streams (tenant, stream, version, head_hash, anchor_version, anchor_hash, updated_us)
    SELECT t, s, v, h, 0, '\\x{'00' * 32}'::bytea, ${_N + 6}
    FROM unnest(${_N + 1}::text[], ${_N + 2}::text[], ${_N + 3}::int[], ${_N + 4}::bytea[]) AS x(t, s, v, h)
    ON CONFLICT (tenant, stream) DO UPDATE
    SET version = EXCLUDED.version, head_hash = EXCLUDED.head_hash, updated_us = EXCLUDED.updated_us
), tn AS (
    INSERT INTO tenants (id, created_us) SELECT unnest(${_N + 5}::text[]), ${_N + 6}
    ON CONFLICT (id) DO NOTHING
), hd AS (
    UPDATE log_head SET position = ${_N + 7}, time_us = ${_N + 6} WHERE id = 1
)
SELECT pg_notify('{PG_NOTIFY_CHANNEL}', ${_N + 7}::text)
"""


_LOCK = "BEGIN; SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE"
_HEADS = """
SELECT l.position, l.time_us, s.tenant, s.stream, s.version, s.head_hash
FROM log_head l
LEFT JOIN streams s ON (s.tenant, s.stream) IN (SELECT * FROM unnest($1::text[], $2::text[]))
WHERE l.id = 1
"""
_KEYS = """
SELECT tenant, key, fingerprint, result FROM idempotency
WHERE (tenant, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""


class PgBatchWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Idle (SQLAlchemy connection, asyncpg connection) pairs. The group committer may
        # run two batches at once; each needs its own connection (they queue on log_head).
        self._idle: list[tuple[Any, Any]] = []
        self._all: list[tuple[Any, Any]] = []

    async def _acquire(self) -> tuple[Any, Any]:
        while self._idle:
            pair = self._idle.pop()
            if not pair[1].is_closed():
                return pair
            await self._drop(pair)
        sa_conn = await self._engine.connect()
        pair = (sa_conn, (await sa_conn.get_raw_connection()).driver_connection)
        self._all.append(pair)
        return pair

    async def _drop(self, pair: tuple[Any, Any]) -> None:
        if pair in self._all:
            self._all.remove(pair)
        try:
            await pair[0].invalidate()
            await pair[0].close()
        except Exception:
            pass

    async def commit(self, calls: list[PreparedAppend], clock_us: Callable[[], int]) -> BatchPlan:
        pair = await self._acquire()
        raw = pair[1]
        try:
            plan = await self._commit(raw, calls, clock_us)
        except BaseException:
            if not raw.is_closed() and raw.is_in_transaction():
                try:
                    await raw.execute("ROLLBACK")
                    self._idle.append(pair)
                except Exception:
                    await self._drop(pair)
            else:
                await self._drop(pair)
            raise
        self._idle.append(pair)
        return plan

    async def _commit(self, raw, calls: list[PreparedAppend], clock_us: Callable[[], int]) -> BatchPlan:
        # Commit order == position order. Every append transaction first locks the single
        # log_head row (FOR UPDATE) and holds the lock until COMMIT or ROLLBACK, so
        # transactions take positions strictly one after another. The heads and the
        # current position are read by the NEXT statement, whose READ COMMITTED snapshot
        # is taken after the lock was granted, so it sees the previous writer's commit
        # (reading them in the locking statement itself would use a snapshot from before
        # the wait). PostgreSQL makes a transaction visible before it releases its locks,
        # so once T2 may commit, T1's events are visible: a reader that has seen position
        # P never later sees a position below P appear. A rolled-back append rolls back
        # its log_head update too: positions have no gaps and readers never wait for a
        # hole to fill. The serialized section is four round trips, amortized over every
        # call of the group commit.
        await raw.execute(_LOCK)
        pairs = sorted({(c.tenant, w.stream) for c in calls for w in c.writes})
        rows = await raw.fetch(_HEADS, [t for t, _ in pairs], [s for _, s in pairs])
        position, head_time = rows[0]["position"], rows[0]["time_us"]
        heads = {(r["tenant"], r["stream"]): Head(r["version"], r["head_hash"]) for r in rows if r["stream"]}
        keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        wanted = sorted({(c.tenant, c.idempotency_key) for c in calls if c.idempotency_key})
        if wanted:
            for r in await raw.fetch(_KEYS, [t for t, _ in wanted], [k for _, k in wanted]):
                keys[(r["tenant"], r["key"])] = (r["fingerprint"], r["result"])
        time_us = max(clock_us(), head_time)  # commit times never go backwards
        plan = plan_batch(calls, heads, keys, position, time_us)
        if plan.rows:
            columns = [[r[c] for r in plan.rows] for c in WRITE_COLUMNS]
            moved = list(plan.heads.items())
            await raw.execute(
                _WRITE_ALL,
                *columns,
                [t for (t, _), _h in moved],
                [s for (_, s), _h in moved],
                [h.version for _k, h in moved],
                [h.hash for _k, h in moved],
                sorted(plan.tenants),
                time_us,
                plan.last_position,
            )
        if plan.new_keys:
            await raw.executemany(
                "INSERT INTO idempotency (tenant, key, fingerprint, result, created_us) VALUES ($1, $2, $3, $4, $5)",
                [(k["tenant"], k["key"], k["fingerprint"], k["result"], k["created_us"]) for k in plan.new_keys],
            )
        await raw.execute("COMMIT")
        return plan

    async def close(self) -> None:
        for sa_conn, _raw in self._all:
            try:
                await sa_conn.close()
            except Exception:
                pass
        self._all.clear()
        self._idle.clear()
