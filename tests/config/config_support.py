"""Helpers for the configuration tests: a real ``syncline serve --config`` on a free port, tokens."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from waiting import wait_serving

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
SECRET = "config-test-secret-0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str = "alice", tenant: str = "acme", roles: tuple[str, ...] = ("member",), ttl_s: int = 600) -> str:
    return jwt.encode({"sub": user, "tenant": tenant, "roles": list(roles), "exp": int(time.time()) + ttl_s},
                      SECRET, algorithm="HS256")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any SYNCLINE_* of the caller's (they would override the file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
    env.update(extra)
    return env


class ConfiguredServer:
    """``python -m syncline.cli serve --config FILE``; the database, port and secret come from
    the environment (which overrides the file's)."""

    def __init__(self, config: Path, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "serve.log"
        self.env = clean_env(
            SYNCLINE_JWT_SECRET=SECRET, SYNCLINE_PORT=str(self.port),
            SYNCLINE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/server.db", SYNCLINE_BATCH_WINDOW_MS="2",
            SYNCLINE_POLL_INTERVAL_S="0.2", SYNCLINE_SHUTDOWN_GRACE_S="1", SYNCLINE_PRUNE_INTERVAL_S="0",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLES)]), **env)
        self.config = config
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ConfiguredServer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "syncline.cli", "serve", "--config", str(self.config)],
                                     cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        wait_serving(self.proc, self.url, self.log_path.read_text, timeout=30)
        return self

    def get(self, path: str, tok: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.get(self.url + path, headers=headers, timeout=5, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
