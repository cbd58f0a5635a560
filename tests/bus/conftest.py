"""The bus suite runs on SQLite and on PostgreSQL (the in-memory store has no database to host it)."""
from __future__ import annotations

import pytest

from syncline.bus import Bus
from syncline.store import open_store


@pytest.fixture(params=["sqlite", "postgres"])
def bus_url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_clean_url")


@pytest.fixture
async def store(bus_url):
    s = await open_store(bus_url, poll_interval_s=0.1)
    yield s
    await s.close()


@pytest.fixture
def bus(store) -> Bus:
    return Bus(store)
