"""Helpers for the client kit tests: a real gateway process on a real port, tokens, the log.

A module of its own (not ``conftest``): ``tests/api`` has a ``conftest`` too, and a
``from conftest import ...`` picks whichever was imported first when both suites run.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
from waiting import wait_for

SECRET = "clientkit-test-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str = "alice", tenant: str = "acme", ttl_s: int = 3600) -> str:
    return jwt.encode({"sub": user, "tenant": tenant, "roles": ["member"], "exp": int(time.time()) + ttl_s},
                      SECRET, algorithm="HS256")


class ServerProcess:
    def __init__(self, db_path: Path, port: int | None = None, env: dict | None = None) -> None:
        self.extra_env = env or {}
        self.db = f"sqlite+aiosqlite:///{db_path}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        env = dict(os.environ, SYNCLINE_JWT_SECRET=SECRET, SYNCLINE_RATE_LIMIT_MESSAGES="1000000",
                   SYNCLINE_BATCH_WINDOW_MS="2", SYNCLINE_LOG_FORMAT="json", SYNCLINE_POLL_INTERVAL_S="0.2",
                   SYNCLINE_SHUTDOWN_GRACE_S="1", PYTHONPATH=str(ROOT), **self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/clientkit/ck_server.py"), "--port", str(self.port), "--db", self.db],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._healthy, 30, "the server to start")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def read_log(server: ServerProcess, tok: str) -> list[dict]:
    """Every event of the tenant, in log order, over REST."""
    out, after = [], 0
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as http:
        while True:
            body = http.get("/v1/log", params={"after": after, "limit": 1000}).json()
            out += body["events"]
            if not body["more"]:
                return out
            after = body["next_after"]
