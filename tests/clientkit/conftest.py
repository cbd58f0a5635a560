"""Fixtures for the client kit tests (helpers in ck_support.py)."""
from __future__ import annotations

import pytest
from ck_support import ServerProcess


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(tmp_path / "server.db").start()
    yield s
    s.stop()


@pytest.fixture
def server_factory(tmp_path):
    started: list[ServerProcess] = []

    def make(**kw) -> ServerProcess:
        s = ServerProcess(tmp_path / f"server{len(started)}.db", **kw).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
