"""The PostgreSQL write path: a group commit in one round trip on the asyncpg driver.

The whole batch is one call of ``syncline_append()`` (migration 0004), sent outside an
explicit transaction, so the statement and its commit are one round trip. The batch
is planned in Python (store/planning.py: versions, positions, times, hash chains)
against the log head and stream heads this writer expects from its own earlier
commits; the function checks those expectations under the log-head lock and writes
only if they all hold. When they do not (another process wrote, a stream this process
has not seen yet, a stored idempotency key), nothing is written and the function
returns what is committed; the writer plans again from that. If the second guess
fails too, other processes are writing: the batch then runs in an explicit
transaction (BEGIN, guess, plan again under the held lock, COMMIT), and later batches
stay there until a first guess succeeds again.

SQLAlchemy owns the pool; the writer borrows the raw asyncpg connection of one pooled
connection (asyncpg prepares and caches the statement per connection).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from .bus_schema import partition_keys
from .pg_expect import Expectations, Outcome
from .planning import BatchPlan, StreamKey, plan_batch
from .rows import WRITE_COLUMNS, PreparedAppend

PG_NOTIFY_CHANNEL = "syncline_log"  # also hard-coded in syncline_append() (migration 0004)

# The events columns syncline_append() takes as arrays; positions and time come from
# the log head and the batch time (the plan gives every row of a batch the same time).
_EVENT_COLUMNS = (
    "id", "tenant", "stream", "version", "type", "schema", "actor_user", "actor_client", "clock",
    "payload", "meta", "retention", "prev_hash", "hash",
)
_UNIQUE_COLUMNS = frozenset({"id", "version", "payload", "prev_hash", "hash"})  # never worth a check
# (index in a planned row, compare for _same) per argument column: plan.values are
# tuples in WRITE_COLUMNS order, so the arrays are slices of one transpose, with no
# dict per row.
_ARRAY_COLUMNS = tuple((WRITE_COLUMNS.index(c), c not in _UNIQUE_COLUMNS) for c in _EVENT_COLUMNS)
_POSITION, _TIME_US = WRITE_COLUMNS.index("position"), WRITE_COLUMNS.index("time_us")
_TENANT, _STREAM = WRITE_COLUMNS.index("tenant"), WRITE_COLUMNS.index("stream")
# 28 arguments: the log head and time, 7 expectations, 14 event columns, the events'
# bus partition keys (migration 0006), 4 idempotency-key columns
_APPEND = "SELECT * FROM syncline_append(" + ", ".join(f"${i}" for i in range(1, 29)) + ")"
_NO_WRITES = ([],) * (len(_EVENT_COLUMNS) + 5)  # events, their partition keys, new idempotency keys


class PgBatchWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Idle (SQLAlchemy connection, asyncpg connection) pairs. The group committer may
        # run two batches at once; each needs its own connection (they queue on log_head).
        self._idle: list[tuple[Any, Any]] = []
        self._all: list[tuple[Any, Any]] = []
        self._expect = Expectations()
        self.optimistic = True  # False: every batch in an explicit transaction
        self._contended = False
        self._last_done: asyncio.Future | None = None  # see _commit

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
            self._expect.forget()
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
        # Commit order == position order. syncline_append() first locks the single
        # log_head row (FOR UPDATE); the lock is held until the transaction commits or
        # rolls back, so transactions take positions strictly one after another. The
        # function then reads the log head, stream heads and idempotency keys in a NEW
        # statement, whose READ COMMITTED snapshot is taken after the lock was granted
        # and so includes the previous writer's commit (a snapshot from before the wait
        # would not), and writes only if the plan's assumptions equal what it read:
        # the rows written are exactly those a plan made under the lock would write.
        # PostgreSQL makes a transaction visible before it releases its locks, so once
        # T2 may commit, T1's events are visible: a reader that has seen position P
        # never later sees a position below P appear. A rolled-back append rolls back
        # its log_head update too: positions have no gaps and readers never wait for a
        # hole to fill. Outside an explicit transaction the call commits by itself
        # (holding the lock through its commit), so the common batch is one round trip.
        #
        # The batch before this one may still be in flight: this one's plan expects its
        # outcome, but the server may run the two in either order (then this one is
        # refused, and plans again once that one is done).
        before, mine = self._last_done, asyncio.get_running_loop().create_future()
        self._last_done = mine
        try:
            return await self._write(raw, calls, clock_us, before)
        finally:
            mine.set_result(None)

    async def _write(self, raw, calls, clock_us, before: asyncio.Future | None) -> BatchPlan:
        streams = list(dict.fromkeys((c.tenant, w.stream) for c in calls for w in c.writes))
        keys = list(dict.fromkeys((c.tenant, c.idempotency_key) for c in calls if c.idempotency_key))
        stored: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        expect = self._expect
        if self.optimistic and not self._contended and expect.position is not None:
            for _attempt in range(2):
                plan, args, outcome = self._plan(calls, clock_us, streams, keys, stored)
                row = await raw.fetchrow(_APPEND, *args)
                if row["r_ok"]:
                    expect.committed(outcome)
                    return plan
                expect.refused(outcome, row)
                stored = _stored_keys(row)
                if before is not None and not before.done():
                    await asyncio.shield(before)  # and plan again on its outcome
            self._contended = True  # two guesses missed: another process is writing
        await raw.execute("BEGIN")
        if expect.position is None:  # find the log head (the call writes nothing)
            row = await raw.fetchrow(_APPEND, -1, 0, *self._expected(streams, keys, stored), *_NO_WRITES)
            expect.reset(row, streams)
            stored = _stored_keys(row)
        plan, args, outcome = self._plan(calls, clock_us, streams, keys, stored)
        row = await raw.fetchrow(_APPEND, *args)
        self._contended = not row["r_ok"]
        if not row["r_ok"]:  # we hold the lock now: what it returned stays true until COMMIT
            expect.reset(row, streams)
            plan, args, outcome = self._plan(calls, clock_us, streams, keys, _stored_keys(row))
            row = await raw.fetchrow(_APPEND, *args)
            if not row["r_ok"]:
                raise RuntimeError("syncline_append() refused a plan made under its own lock")
        await raw.execute("COMMIT")
        expect.committed(outcome)
        return plan

    def _expected(self, streams: list[StreamKey], keys: list[tuple[str, str]], stored: dict) -> tuple:
        head = self._expect.head
        versions, hashes = [], []
        for k in streams:
            h = head(k)
            versions.append(h.version if h else 0)
            hashes.append(h.hash if h else None)
        return (
            _same([t for t, _ in streams]), [s for _, s in streams], versions, hashes,
            [t for t, _ in keys], [k for _, k in keys], [k in stored for k in keys],
        )

    def _plan(self, calls, clock_us, streams, keys, stored) -> tuple[BatchPlan, tuple, Outcome]:
        """Plan the batch on what this writer expects, then expect its outcome too, so a
        second batch in flight can be planned on top of it."""
        expect = self._expect
        heads = {k: h for k in streams if (h := expect.head(k)) is not None}
        position, head_time = expect.log_head()
        time_us = max(clock_us(), head_time)  # commit times never go backwards
        plan = plan_batch(calls, heads, stored, position, time_us)
        values, new_keys = plan.values, plan.new_keys
        if values and not (values[0][_POSITION] == position + 1 and plan.last_position == position + len(values)
                           and values[-1][_TIME_US] == time_us):
            raise AssertionError("syncline_append() numbers and times a batch's events from the log head")
        columns = list(zip(*values)) if values else [()] * len(WRITE_COLUMNS)
        args = (
            position, time_us, *self._expected(streams, keys, stored),
            *(_same(list(columns[i])) if compare else list(columns[i]) for i, compare in _ARRAY_COLUMNS),
            _same(partition_keys(columns[_TENANT], columns[_STREAM])),
            [k["tenant"] for k in new_keys], [k["key"] for k in new_keys],
            [k["fingerprint"] for k in new_keys], [k["result"] for k in new_keys],
        )
        if values:
            outcome = expect.planned(plan.last_position, time_us, plan.heads)
        else:  # the log head does not move
            outcome = expect.planned(position, head_time, plan.heads)
        return plan, args, outcome

    async def close(self) -> None:
        for sa_conn, _raw in self._all:
            try:
                await sa_conn.close()
            except Exception:
                pass
        self._all.clear()
        self._idle.clear()


def _stored_keys(row) -> dict[tuple[str, str], tuple[bytes, bytes]]:
    """The idempotency keys of the batch that syncline_append() found stored."""
    return dict(zip(zip(row["r_key_tenants"] or (), row["r_keys"] or ()),
                    zip(row["r_fingerprints"] or (), row["r_results"] or ())))


def _same(values: list) -> list:
    """A column whose values are all equal travels as one element (asyncpg encodes
    arrays element by element, and that was a fifth of the writer's CPU time)."""
    if len(values) > 1 and values.count(values[0]) == len(values):
        return values[:1]
    return values
