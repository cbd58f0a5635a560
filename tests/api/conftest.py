"""A real gateway on a real port: uvicorn in a thread with its own event loop.

``gateway`` is a factory: ``srv = gateway(**settings_overrides)`` starts a server on a
free port with a fresh SQLite file and returns a handle with ``url``, ``ws_url``,
``token(...)`` and ``stop()``. Every server is stopped at the end of the test.
``gateway(clock=HandClock())`` gives the gateway a clock the test moves instead of sleeping.
"""
from __future__ import annotations

from typing import Any

import pytest
from api_support import RunningGateway, base_settings


@pytest.fixture
def gateway(tmp_path):
    started: list[RunningGateway] = []

    def factory(**overrides: Any) -> RunningGateway:
        db = overrides.pop("database_url", f"sqlite+aiosqlite:///{tmp_path}/gw{len(started)}.db")
        clock = overrides.pop("clock", None)
        g = RunningGateway(base_settings(db, **overrides), clock=clock).start()
        started.append(g)
        return g

    yield factory
    for g in started:
        g.stop()


@pytest.fixture
def srv(gateway) -> RunningGateway:
    return gateway()
