"""The conformance suite's targets (protocol_targets.py), one fixture parameter each."""
from __future__ import annotations

from typing import Any

import pytest
from protocol_targets import CoreTarget, GatewayTarget


@pytest.fixture(params=["core", "gateway-sqlite", "gateway-postgres"])
def target(request, tmp_path):
    if request.param == "core":
        t: Any = CoreTarget()
    elif request.param == "gateway-sqlite":
        t = GatewayTarget(request.param, f"sqlite+aiosqlite:///{tmp_path}/conf.db")
    else:
        t = GatewayTarget(request.param, request.getfixturevalue("pg_clean_url"))
    yield t
    if isinstance(t, GatewayTarget):
        t.g.stop()
