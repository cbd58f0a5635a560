"""Helpers for the limit tests: a real ``syncline serve`` subprocess whose RSS is read from
/proc/<pid>/status, a sampler of its peak RSS, and a raw WebSocket client that can send
what a hostile client sends (fragments without end, half-sent frames, frames after a
close) — a library client would refuse to.
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from waiting import wait_serving

SECRET = "limits-test-secret-0123456789abcdef0123456789"
TENANT = "acme"
MB = 1024 * 1024


def token(user: str = "alice", *, tenant: str = TENANT, roles=("member",), ttl_s: int = 3600) -> str:
    claims = {"sub": user, "tenant": tenant, "roles": list(roles), "exp": int(time.time()) + ttl_s}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Serve:
    """``python -m syncline.cli serve`` on a free port and a fresh SQLite file (the code of
    the tree on PYTHONPATH), with the given ``SYNCLINE_*`` overrides."""

    def __init__(self, workdir: Path, **env: Any) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
        self.env.update({"SYNCLINE_JWT_SECRET": SECRET, "SYNCLINE_LOG_FORMAT": "json",
                         "SYNCLINE_PRUNE_INTERVAL_S": "0", "SYNCLINE_POLL_INTERVAL_S": "0.2",
                         "PYTHONUNBUFFERED": "1"})
        self.env.update({f"SYNCLINE_{k.upper()}": str(v) for k, v in env.items()})
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "syncline.cli", "serve", "--port", str(self.port),
               "--db", f"sqlite+aiosqlite:///{self.workdir}/events.db"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

        wait_serving(self.proc, self.url, self.log_path.read_text)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value (0 when the series is absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series == want:
                return float(value)
        return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PeakRss:
    """Samples a process's RSS every ``interval_s`` in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header (with an all-zero mask) of a frame whose payload follows separately:
    with a zero mask the payload goes as it is."""
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        head = bytes((b0, 0x80 | length))
    elif length < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, length)
    return head + b"\0\0\0\0"


class RawWs:
    """A WebSocket client on a plain asyncio stream: it sends exactly the bytes a test
    writes, and reads the server's frames (``recv``) and its close code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, port: int, path: str, *, subprotocol: str | None = None) -> RawWs:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * MB)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.decode(errors="replace"))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload). A close frame sets ``close_code``."""
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(n)
            if b0 & 0x0F == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode(errors="replace")
            return b0 & 0x0F, payload
        return await asyncio.wait_for(read(), timeout)

    async def until_closed(self, timeout: float = 10) -> int | None:
        """Read frames until the server's close frame; its code (None if the socket ended without one)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.close_code is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("no close frame")
            try:
                await self.recv(left)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
        return self.close_code

    async def eof(self, timeout: float = 10) -> bool:
        """True once the server has closed the TCP connection (what it sends is drained)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except (ConnectionError, OSError):
            return True
        except TimeoutError:
            return False

    def abort(self) -> None:
        self.writer.transport.abort()
