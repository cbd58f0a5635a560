"""The test services and fixtures are real: PostgreSQL and Redis answer, databases are fresh."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aredis


def _asyncpg_dsn(url: str) -> str:
    """postgresql+asyncpg://… -> postgresql://… (the form asyncpg.connect takes)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


_made: list[str] = []


async def test_pg_url_reaches_postgresql(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://")
    conn = await asyncpg.connect(_asyncpg_dsn(pg_url))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "syncline_test"
        assert await conn.fetchval("SHOW server_version_num") >= "130000"
    finally:
        await conn.close()


async def test_pg_clean_url_is_fresh_and_empty(pg_url: str, pg_clean_url: str) -> None:
    assert pg_clean_url != pg_url
    name = pg_clean_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_asyncpg_dsn(pg_clean_url))
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE scratch (x int)")  # the database is ours to change
    finally:
        await conn.close()
    _made.append(name)


def test_pg_clean_url_works_from_sync_tests_and_is_dropped(pg_url: str, pg_clean_url: str) -> None:
    import asyncio

    async def check() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(pg_url))
        try:
            existing = {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
        finally:
            await conn.close()
        assert pg_clean_url.rsplit("/", 1)[1] in existing
        for name in _made:  # databases of earlier tests are gone
            assert name not in existing

    asyncio.run(check())


async def test_redis_url_reaches_redis(redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    client = aredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


@pytest.mark.parametrize("round_", [1, 2])
async def test_redis_client_url_is_flushed(redis_client_url: str, round_: int) -> None:
    client = aredis.Redis.from_url(redis_client_url)
    try:
        assert await client.dbsize() == 0  # the previous round's key is gone
        await client.set("syncline:smoke", round_)
    finally:
        await client.aclose()


async def test_sqlite_url_is_usable(sqlite_url: str, tmp_path) -> None:
    import aiosqlite

    assert sqlite_url == f"sqlite+aiosqlite:///{tmp_path}/events.db"
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    async with aiosqlite.connect(path) as db:
        async with db.execute("SELECT 1") as cur:
            assert await cur.fetchone() == (1,)
    assert (tmp_path / "events.db").exists()
