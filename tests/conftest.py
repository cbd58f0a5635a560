"""Shared test fixtures: real PostgreSQL, Redis and SQLite, and hypothesis profiles.

PostgreSQL and Redis come from ``scripts/services.sh start`` (``make test`` starts and
stops them), which exports ``SYNCLINE_TEST_PG_URL`` and ``SYNCLINE_TEST_REDIS_URL``.
Without them a test that needs one is skipped locally, and fails under CI (env ``CI``).

Fixtures
--------
pg_url            session: URL of the shared ``syncline_test`` database (postgresql+asyncpg://…)
pg_clean_url      function: URL of a fresh, empty database made for this test, dropped afterwards
redis_url         session: redis://127.0.0.1:PORT/0
redis_client_url  function: same URL, with that Redis database flushed before the test
sqlite_url        function: sqlite+aiosqlite:///<tmp_path>/events.db (file not created)

Tests using the PostgreSQL or Redis fixtures get the ``postgres`` / ``redis`` marker
automatically, so ``-m "not postgres and not redis"`` runs without services.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, settings

# --------------------------------------------------------------------------- hypothesis

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("SYNCLINE_HYPOTHESIS_PROFILE", "ci"))

# --------------------------------------------------------------------------- helpers

PG_ENV = "SYNCLINE_TEST_PG_URL"
REDIS_ENV = "SYNCLINE_TEST_REDIS_URL"

_PG_FIXTURES = {"pg_url", "pg_clean_url"}
_REDIS_FIXTURES = {"redis_url", "redis_client_url"}


def _service_url(env: str, what: str) -> str:
    url = os.environ.get(env, "").strip()
    if url:
        return url
    msg = (
        f"{what} is not configured: {env} is not set. "
        "Run the suite with `make test` (or scripts/test.sh), which starts a throwaway "
        "PostgreSQL and Redis; or `scripts/services.sh start` then "
        "`set -a; . var/services.env; set +a` before pytest."
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI: {msg}", pytrace=False)
    pytest.skip(msg)


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    """postgresql+asyncpg://u@h:p/db -> postgresql://u@h:p/<database or db> (asyncpg's form)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _run_async(coro_factory):
    """Run a coroutine to completion on a private loop in a worker thread.

    Works from sync and async tests alike, and never touches the event loop that
    pytest-asyncio manages for the test.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url, "postgres"), timeout=30)
    try:
        for stmt in statements:
            await conn.execute(stmt)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _PG_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if names & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the shared PostgreSQL test database (postgresql+asyncpg://…/syncline_test)."""
    return _service_url(PG_ENV, "PostgreSQL")


@pytest.fixture
def pg_clean_url(pg_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for this test only; dropped afterwards."""
    name = f"t_{os.getpid()}_{uuid.uuid4().hex[:16]}"
    _run_async(lambda: _pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(pg_url, name)
    finally:
        # WITH (FORCE) (PostgreSQL >= 13) ends connections a test left open.
        _run_async(lambda: _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (redis://127.0.0.1:PORT/0)."""
    return _service_url(REDIS_ENV, "Redis")


@pytest.fixture
def redis_client_url(redis_url: str) -> str:
    """The test Redis URL, with its database flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """SQLAlchemy URL of a SQLite file in this test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path}/events.db"
