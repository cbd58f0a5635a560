"""Real processes for the chaos tests: `syncline serve`, a private Redis, a TCP proxy
that can cut every connection, and waiting on conditions with deadlines."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jwt
from services_support import PrivateRedis
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "chaos-test-secret-0123456789abcdef-xyz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str, tenant: str = "acme") -> str:
    return jwt.encode({"sub": user, "tenant": tenant, "roles": ["member"], "exp": int(time.time()) + 3600},
                      SECRET, algorithm="HS256")


class Gateway:
    """`syncline serve` as a child process (the real command line)."""

    def __init__(self, db: str, log_dir: Path, *, port: int | None = None, redis: str | None = None) -> None:
        self.db, self.redis = db, redis
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        # The gateway's log (stdout and stderr), shown when a client does not converge.
        self.log_path = Path(tempfile.mkstemp(prefix=f"gateway-{self.port}-", suffix=".log", dir=log_dir)[1])

    def start(self) -> "Gateway":
        env = dict(os.environ, SYNCLINE_JWT_SECRET=SECRET, SYNCLINE_RATE_LIMIT_MESSAGES="1000000",
                   SYNCLINE_BATCH_WINDOW_MS="5", SYNCLINE_POLL_INTERVAL_S="0.2", SYNCLINE_SHUTDOWN_GRACE_S="1",
                   SYNCLINE_POLL_MIN_S="0.2", SYNCLINE_POLL_MAX_S="1", PYTHONPATH=str(ROOT))
        args = [sys.executable, str(Path(__file__).with_name("serve_with_dumps.py")), "serve",
                "--port", str(self.port), "--db", self.db]
        if self.redis:
            args += ["--redis", self.redis]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.healthy, 30, "the gateway to start")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> dict:
        return httpx.get(f"{self.url}/readyz", timeout=2).json()

    def dump_tasks(self) -> None:
        """Ask the gateway to print its asyncio tasks and threads into its log."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(0.5)

    def log_tail(self, lines: int = 200) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


RedisServer = PrivateRedis  # (tests/services_support.py)


class CuttableProxy:
    """A TCP proxy in front of the gateway; ``cut()`` aborts every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0

    async def start(self) -> "CuttableProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # the proxy is closing
            pass

    def cut(self) -> None:
        self.cuts += 1
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
