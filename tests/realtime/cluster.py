"""Real processes for the realtime tests: `syncline serve` gateways, a private Redis, a
round-robin TCP proxy, fresh PostgreSQL databases and tokens.

Everything here is synchronous (subprocesses and threads), so one instance can serve a
whole test module whatever event loop each test runs on.

- :class:`GatewayProcess`: one ``syncline serve --port N --db URL [--redis URL]`` with a
  test JWT secret, a fast poll interval and JSON logs in a file; ``start()`` +
  ``wait_ready()`` (``/healthz``), ``stop()`` (SIGTERM, then SIGKILL on timeout),
  ``restart()`` on the same port.
- :class:`RedisProcess`: a private ``redis-server`` on a free port (no persistence) that a
  test may ``kill()`` (SIGKILL) and ``restart()`` on the same port.
- :class:`RoundRobinProxy`: an asyncio TCP proxy in its own thread; each accepted
  connection goes to the next backend in turn, and ``assignments`` records which.
- :func:`create_database` / :func:`drop_database`: a uniquely named PostgreSQL database.

Every started gateway is registered in :data:`LIVE`, so conftest.py can attach the log
lines written during a failing test to its report.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
from services_support import PrivateRedis
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SECRET = "realtime-test-secret-0123456789abcdef0123"
TENANT = "acme"


def serve_command() -> list[str]:
    """``.venv/bin/syncline serve``: the console script of the interpreter running the tests.

    With ``SYNCLINE_RT_SOURCE=<dir>`` the gateways run the code in that directory instead
    (``python -m api.cli`` with it first on PYTHONPATH), e.g. an export of an older commit
    (``git archive HEAD | tar -x -C DIR``) to see these tests fail on the code before a fix."""
    if os.environ.get("SYNCLINE_RT_SOURCE"):
        return [sys.executable, "-m", "syncline.cli", "serve"]
    for candidate in (Path(sys.executable).parent / "syncline", REPO / ".venv" / "bin" / "syncline"):
        if candidate.exists():
            return [str(candidate), "serve"]
    raise RuntimeError("the `syncline` console script is not installed (run `make setup`)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_token(user: str, *, tenant: str = TENANT, roles: tuple[str, ...] = ("member",), ttl_s: int = 3600) -> str:
    claims = {"sub": user, "tenant": tenant, "roles": list(roles), "exp": int(time.time()) + ttl_s}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def auth(user: str = "tester", **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, **kw)}"}


# --------------------------------------------------------------------------- gateways

LIVE: list[GatewayProcess] = []  # every gateway started in this test session (for logs)


class GatewayProcess:
    """One ``syncline serve`` process. Its output goes (appended, across restarts) to
    ``log_path``."""

    def __init__(self, name: str, db_url: str, *, workdir: Path, redis_url: str | None = None,
                 port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.db_url = db_url
        self.redis_url = redis_url
        self.port = port or free_port()
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
        env.update({
            "SYNCLINE_JWT_SECRET": SECRET,
            "SYNCLINE_POLL_INTERVAL_S": "0.2",
            "SYNCLINE_LOG_FORMAT": "json",
            "SYNCLINE_YJS_DOC_IDLE_S": "300",
            "SYNCLINE_PRUNE_INTERVAL_S": "86400",
            "SYNCLINE_SHUTDOWN_GRACE_S": "2",
            "PYTHONUNBUFFERED": "1",
        })
        source = os.environ.get("SYNCLINE_RT_SOURCE")
        if source:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        return env

    def start(self) -> GatewayProcess:
        """Spawn the process (does not wait: call :meth:`wait_ready`)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [*serve_command(), "--port", str(self.port), "--db", self.db_url]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        with open(self.log_path, "ab") as log:
            source = os.environ.get("SYNCLINE_RT_SOURCE")
            log.write(f"==== {time.strftime('%H:%M:%S')} start {' '.join(cmd)}"
                      f"{' (code from ' + source + ')' if source else ''}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self not in LIVE:
            LIVE.append(self)
        return self

    def wait_ready(self, timeout: float = 60) -> GatewayProcess:
        def up() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited during startup "
                                   f"(code {self.proc.returncode if self.proc else None}):\n{self.log_tail(40)}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"gateway {self.name} on port {self.port} to answer /healthz")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (graceful: connections get ``bye``, rooms snapshot), SIGKILL on timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(f"==== no exit {timeout}s after SIGTERM: SIGKILL\n".encode())
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.exit_codes.append(code)
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} exited with {code}\n".encode())
        return code

    def restart(self, timeout: float = 60) -> GatewayProcess:
        self.stop()
        return self.start().wait_ready(timeout)

    # -- inspection ------------------------------------------------------------

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200, since: int = 0) -> str:
        return "\n".join(self.log_text(since).splitlines()[-lines:])

    def get(self, path: str, *, user: str = "tester", timeout: float = 10, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=auth(user), params=params or None, timeout=timeout)

    def readyz(self) -> dict:
        return httpx.get(f"{self.url}/readyz", timeout=5).json()

    def redis_state(self) -> str | None:
        try:
            return self.readyz()["dependencies"]["redis"]["state"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled Prometheus series, or None if absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{}")):
                return float(line.rsplit(" ", 1)[1])
        return None


def start_gateways(gateways: list[GatewayProcess], timeout: float = 60) -> list[GatewayProcess]:
    """Start several gateways at once (they import and migrate in parallel)."""
    for g in gateways:
        g.start()
    for g in gateways:
        g.wait_ready(timeout)
    return gateways


def stop_gateways(gateways: list[GatewayProcess]) -> None:
    """SIGTERM all at once, then wait for each."""
    for g in gateways:
        if g.running:
            g.proc.send_signal(signal.SIGTERM)
    for g in gateways:
        g.stop()


# --------------------------------------------------------------------------- redis

class RedisProcess(PrivateRedis):
    """A private redis-server (tests/services_support.py) logging beside the cluster's gateways."""

    def __init__(self, server_bin: str, workdir: Path, port: int | None = None) -> None:
        super().__init__(port, binary=server_bin)
        self.workdir = workdir
        self.log_path = workdir / f"redis-{self.port}.log"


# --------------------------------------------------------------------------- proxy

class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1 that sends each new connection to the next backend port
    in turn. ``assignments[i]`` is the backend index of the i-th accepted connection.
    A connection whose backend refuses is closed at once (the client retries, and the
    retry goes to the next backend)."""

    def __init__(self, backends: list[int]) -> None:
        assert backends
        self.backends = list(backends)
        self.port = 0
        self.assignments: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="rr-proxy", daemon=True)

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error or not self.port:
            raise RuntimeError(f"proxy failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def last(self) -> int:
        """The backend index of the most recent connection."""
        with self._lock:
            return self.assignments[-1]

    def peek(self) -> int:
        """The backend index the next connection will go to."""
        with self._lock:
            return self._next % len(self.backends)

    def _pick(self) -> int:
        with self._lock:
            i = self._next % len(self.backends)
            self._next += 1
            self.assignments.append(i)
            return i

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except (OSError, RuntimeError) as e:  # reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (ConnectionError, OSError, RuntimeError):
                    pass

        async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
            i = self._pick()
            try:
                b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.backends[i])
            except OSError:
                c_writer.close()
                return
            me = asyncio.current_task()
            tasks.add(me)
            try:
                await asyncio.gather(pipe(c_reader, b_writer), pipe(b_reader, c_writer))
            finally:
                tasks.discard(me)
                for w in (c_writer, b_writer):
                    w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.wait(list(tasks), timeout=2)


# --------------------------------------------------------------------------- postgresql

def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))


def _run_async(coro_factory):
    """Run a coroutine on a private loop in a worker thread (safe from sync or async code)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url, "postgres"), timeout=30)
    try:
        for stmt in statements:
            await conn.execute(stmt)
    finally:
        await conn.close()


def create_database(server_url: str, label: str = "rt") -> str:
    """A new, empty database on the server of ``server_url``; returns its SQLAlchemy URL."""
    name = f"{label}_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    _run_async(lambda: _pg_admin(server_url, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def drop_database(db_url: str) -> None:
    name = urlsplit(db_url).path.lstrip("/")
    _run_async(lambda: _pg_admin(db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --------------------------------------------------------------------------- a cluster

class Cluster:
    """N gateways on one store (and optionally one Redis), behind a round-robin proxy."""

    def __init__(self, workdir: Path, db_url: str, *, n: int = 2, redis: RedisProcess | None = None,
                 env: dict[str, str] | None = None, proxy: bool = True, label: str = "gw") -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.redis = redis
        self.gateways = [
            GatewayProcess(f"{label}{i}", db_url, workdir=workdir, redis_url=redis.url if redis else None, env=env)
            for i in range(n)
        ]
        self.proxy = RoundRobinProxy([g.port for g in self.gateways]) if proxy else None

    def start(self) -> Cluster:
        if self.db_url.startswith("sqlite"):
            # On a new SQLite file, processes that start together race each other's
            # migrations ("table bus_groups already exists", seen under load): the first
            # one creates the schema, then the others start together.
            start_gateways(self.gateways[:1])
            start_gateways(self.gateways[1:])
        else:  # PostgreSQL: an advisory lock serializes the migrations
            start_gateways(self.gateways)
        if self.proxy is not None and not self.proxy.port:
            self.proxy.start()
        return self

    def stop(self) -> None:
        stop_gateways(self.gateways)

    def restart(self) -> None:
        """Stop every gateway, then start them all again on the same ports."""
        stop_gateways(self.gateways)
        start_gateways(self.gateways)

    def close(self) -> None:
        try:
            if self.proxy is not None:
                self.proxy.stop()
        finally:
            self.stop()

    def __getitem__(self, i: int) -> GatewayProcess:
        return self.gateways[i]

    def __len__(self) -> int:
        return len(self.gateways)

    @property
    def a(self) -> GatewayProcess:
        return self.gateways[0]

    @property
    def b(self) -> GatewayProcess:
        return self.gateways[-1]


@contextmanager
def pg_redis_cluster(workdir: Path, pg_server: str, redis_server: str, *, n: int = 2,
                     env: dict[str, str] | None = None, label: str = "pg") -> Iterator[Cluster]:
    """A fresh PostgreSQL database, a private Redis and ``n`` gateways on both behind a
    round-robin proxy; every gateway reports Redis ``up`` before this yields. All of it is
    stopped and dropped afterwards."""
    db = create_database(pg_server)
    redis = None
    cluster = None
    try:
        redis = RedisProcess(redis_server, workdir / "redis").start()
        cluster = Cluster(workdir, db, n=n, redis=redis, env=env, label=label).start()
        for g in cluster.gateways:
            wait_for(lambda g=g: g.redis_state() == "up", 15, f"{g.name} to report redis up")
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.close()
            if redis is not None:
                redis.stop()
        finally:
            drop_database(db)
