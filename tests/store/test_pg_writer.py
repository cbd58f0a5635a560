"""The PostgreSQL write path (store/pg_writer.py): one round trip per batch when this
process is the only writer, and right answers whenever its guess of the log is wrong."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic import command
from store_helpers import raw_sql

from syncline.engine.errors import ConcurrencyError, IdempotencyMismatch
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.migrate import _config


def ev(n: int = 0) -> NewEvent:
    return NewEvent("thing.happened", {"n": n})


def count_statements(store) -> list[str]:
    """Record every statement the batch writer sends (a wrapper around its connections)."""
    sent: list[str] = []
    writer = store._writer
    acquire = writer._acquire

    class Counting:
        def __init__(self, raw):
            self._raw = raw

        def __getattr__(self, name):
            return getattr(self._raw, name)

        async def execute(self, query, *args):
            sent.append(query)
            return await self._raw.execute(query, *args)

        async def fetchrow(self, query, *args):
            sent.append("syncline_append" if "syncline_append" in query else query)
            return await self._raw.fetchrow(query, *args)

    async def counted():
        sa_conn, raw = await acquire()  # the pair goes back to the writer's idle list as returned
        return sa_conn, raw if isinstance(raw, Counting) else Counting(raw)

    writer._acquire = counted
    return sent


async def test_a_lone_writer_commits_each_batch_in_one_statement(pg_clean_url):
    store = await open_store(pg_clean_url)
    try:
        await store.append("acme", "s/warm", [ev()])  # the first batch finds the log head
        sent = count_statements(store)
        results = await asyncio.gather(
            *(store.append("acme", f"s/{k}", [ev(k)], expected_version=0) for k in range(20))
        )
        r = await store.append("acme", "s/warm", [ev(), ev()], expected_version=1)
        assert r.first_position == max(x.last_position for x in results) + 1
        assert 2 <= len(sent) <= 21 and all(q == "syncline_append" for q in sent)  # no BEGIN, no COMMIT
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_two_writers_on_one_database_take_turns_correctly(pg_clean_url):
    """Each store's guess goes stale whenever the other writes: answers stay right."""
    a = await open_store(pg_clean_url)
    b = await open_store(pg_clean_url)
    try:
        positions = []
        for i in range(12):
            store = (a, b)[i % 2]
            r = await store.append("acme", "s/shared", [ev(i)], expected_version=i)
            positions.append(r.last_position)
            with pytest.raises(ConcurrencyError) as info:
                await (b, a)[i % 2].append("acme", "s/shared", [ev()], expected_version=i)
            assert info.value.actual == i + 1
        assert positions == list(range(1, 13))
        # both write at once, many times: no lost, duplicated or reordered position
        got = await asyncio.gather(
            *(s.append("acme", f"s/{tag}{k}", [ev(k)]) for k in range(30) for tag, s in (("a", a), ("b", b)))
        )
        assert sorted(r.last_position for r in got) == list(range(13, 73))
        page = await a.read_log("acme", after=0, limit=1000)
        assert [e.position for e in page.events] == list(range(1, 73))
        assert (await a.verify()).ok
    finally:
        await a.close()
        await b.close()


async def test_a_stale_guess_never_decides_a_conflict_or_a_duplicate(pg_clean_url):
    a = await open_store(pg_clean_url)
    b = await open_store(pg_clean_url)
    try:
        await a.append("acme", "s/1", [ev()], expected_version=0)
        first = await a.append("acme", "s/2", [ev()], idempotency_key="k1")
        # b moves s/1 on; a still expects version 1 and must learn better, not refuse
        await b.append("acme", "s/1", [ev()], expected_version=1)
        r = await a.append("acme", "s/1", [ev()], expected_version=2)
        assert r.streams[0].last_version == 3
        with pytest.raises(ConcurrencyError):
            await a.append("acme", "s/1", [ev()], expected_version=2)
        # a key stored by a is a duplicate for b, whose guess knows no keys
        again = await b.append("acme", "s/2", [ev()], idempotency_key="k1")
        assert again.duplicate and again.last_position == first.last_position
        with pytest.raises(IdempotencyMismatch):
            await b.append("acme", "s/2", [ev(), ev()], idempotency_key="k1")
        # rows edited behind the writer's back: its guess is refused, the database wins
        await raw_sql(a, pg_clean_url, "UPDATE streams SET version = 7 WHERE stream = 's/1'")
        with pytest.raises(ConcurrencyError) as info:
            await a.append("acme", "s/1", [ev()], expected_version=3)
        assert info.value.actual == 7
    finally:
        await a.close()
        await b.close()


async def test_one_conflict_in_a_batch_fails_only_its_caller(pg_clean_url):
    store = await open_store(pg_clean_url)
    try:
        await store.append("acme", "s/x", [ev()])
        outcomes = await asyncio.gather(
            store.append("acme", "s/x", [ev()], expected_version=0),
            *(store.append("acme", f"s/y{k}", [ev()], expected_version=0) for k in range(5)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], ConcurrencyError)
        assert all(not isinstance(o, Exception) for o in outcomes[1:])
        assert await store.head_position() == 6
    finally:
        await store.close()


def test_migration_0004_creates_and_drops_the_append_function(pg_clean_url):
    dsn = pg_clean_url.replace("postgresql+asyncpg", "postgresql")

    async def has_function() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'syncline_append'") == 1
        finally:
            await conn.close()

    async def migrate(target: str) -> None:
        store = await open_store(pg_clean_url, listen=False)
        try:
            async with store.engines[0].connect() as conn:
                step = command.upgrade if target == "head" else command.downgrade
                await conn.run_sync(lambda c: step(_config(c), target))
                await conn.commit()
        finally:
            await store.close()

    asyncio.run(migrate("head"))
    assert asyncio.run(has_function())
    asyncio.run(migrate("0003"))
    assert not asyncio.run(has_function())
    asyncio.run(migrate("head"))
    assert asyncio.run(has_function())


def test_expectations_overlay_pending_outcomes_and_drop_refused_ones():
    from syncline.store.pg_expect import Expectations
    from syncline.store.planning import Head

    x = Expectations()
    x.reset({"r_position": 10, "r_time_us": 5, "r_tenants": ["t"], "r_streams": ["a"], "r_versions": [3],
             "r_hashes": [b"a3"]}, [("t", "a")])
    first = x.planned(12, 6, {("t", "a"): Head(5, b"a5")})
    second = x.planned(13, 7, {("t", "b"): Head(1, b"b1")})
    assert x.log_head() == (13, 7) and x.head(("t", "a")).version == 5 and x.head(("t", "b")).version == 1
    # the first is refused: the second was planned on it, so it is no longer expected either
    x.refused(first, {"r_position": 11, "r_time_us": 6, "r_tenants": ["t"], "r_streams": ["a"], "r_versions": [4],
                      "r_hashes": [b"a4"], "r_key_tenants": None, "r_keys": None})
    assert x.log_head() == (11, 6) and x.head(("t", "a")) == Head(4, b"a4") and x.head(("t", "b")) is None
    # an answer that arrives late never takes the expectation back
    x.committed(second)  # (it could commit: nothing it expected had changed)
    x.refused(first, {"r_position": 10, "r_time_us": 5, "r_tenants": ["t"], "r_streams": ["a"], "r_versions": [3],
                      "r_hashes": [b"a3"]})
    assert x.log_head() == (13, 7) and x.head(("t", "a")).version == 4 and x.head(("t", "b")).version == 1
    x.forget()
    assert x.log_head()[0] is None
