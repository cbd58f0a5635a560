"""Fixtures for the configuration tests (helpers in config_support.py)."""
from __future__ import annotations

import pytest
from config_support import ConfiguredServer


@pytest.fixture
def configured_server(tmp_path):
    """``configured_server(path, **env)``: a real ``syncline serve --config path``, stopped at the end."""
    started: list[ConfiguredServer] = []

    def start(config, **env) -> ConfiguredServer:
        s = ConfiguredServer(config, tmp_path / f"s{len(started)}", **env)
        s.log_path.parent.mkdir(parents=True, exist_ok=True)
        started.append(s.start())
        return s

    yield start
    for s in started:
        s.stop()
