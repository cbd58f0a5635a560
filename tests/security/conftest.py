"""Fixtures shared by the security tests."""
from __future__ import annotations

import pytest
from sec_limits_support import Serve


@pytest.fixture
def serve(tmp_path):
    """``serve(**env)`` starts a real ``syncline serve`` (settings as environment
    variables); every one started is stopped at the end of the test."""
    started: list[Serve] = []

    def start(**env) -> Serve:
        s = Serve(tmp_path / f"s{len(started)}", **env).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
