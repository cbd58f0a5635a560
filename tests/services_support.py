"""A private redis-server for tests that kill or restart Redis (the suite's shared one must
not be stopped under other tests): the one implementation, used by the hub, chaos and
realtime tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """No persistence; ``kill`` (SIGKILL: connections drop at once), ``stop``, and ``start``
    again on the same port (clients reconnect to the same URL)."""

    def __init__(self, port: int | None = None, *, binary: str | None = None, log_path: Path | None = None) -> None:
        self.binary = binary or os.environ.get("SYNCLINE_TEST_REDIS_SERVER") or shutil.which("redis-server")
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10) -> PrivateRedis:
        if not self.binary:
            raise RuntimeError("redis-server not found (make test installs it)")
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no"]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--dir", str(self.log_path.parent)]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log_path.read_text()[-2000:] if self.log_path else ""
                raise RuntimeError(f"redis-server exited (code {self.proc.returncode}): {log}")
            return self.ping()

        wait_for(up, timeout, f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> PrivateRedis:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
