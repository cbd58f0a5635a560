"""Every store adapter runs the same suite: memory, SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from syncline.store import open_store


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_clean_url")


@pytest.fixture
async def store(store_url):
    s = await open_store(store_url, poll_interval_s=0.2)
    yield s
    await s.close()


