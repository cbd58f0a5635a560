"""Remote bus consumers against a real gateway on a real port (uvicorn in a thread).

``net_gateway(db_url, **settings)`` starts one (REST rate limits raised: a consumer
long-polls and acks many times a second) and stops it at the end of the test.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402


@pytest.fixture
def net_gateway():
    started: list[RunningGateway] = []

    def factory(db_url: str, **overrides: Any) -> RunningGateway:
        overrides.setdefault("rest_rate_requests", 1_000_000)
        overrides.setdefault("poll_interval_s", 0.2)
        g = RunningGateway(base_settings(db_url, **overrides)).start()
        started.append(g)
        return g

    yield factory
    for g in started:
        g.stop()
