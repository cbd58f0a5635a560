"""Yjs room fan-out: one writer, N readers; Syncline vs pycrdt-websocket and Node's server.

The writer sends the first 20,000 keystrokes of the automerge-paper editing trace as
y-websocket updates (one update per keystroke, made with pycrdt before the clock
starts; the trace's character positions are converted to the UTF-8 byte indices pycrdt
counts in); every reader counts the updates it receives. Cases:

- ``yjs``: ``/v1/yjs/{doc}`` of ``syncline serve`` (every update appended to the
  SQLite log before it is relayed) with each WebSocket implementation: our own
  ``lean`` (the default of ``syncline serve``), uvicorn's ``websockets`` and
  ``websockets-sansio``; the headline figures come from the fastest;
- ``native``: the same updates as room messages (``say`` → ``msg``) on ``/v1/ws``
  (msgpack); since issue 13 room messages are appended to ``room/…`` streams too;
- ``anchor``: pycrdt-websocket's ``ASGIServer`` + ``WebsocketServer`` under uvicorn,
  default in-memory rooms (no store);
- ``node``: Node's ``@y/websocket-server`` (NODE_PACKAGES, exact versions, installed
  from npm into a temp dir at run time), in-memory rooms, as its README runs it;
- ``pg+redis``: two ``syncline serve`` processes on one PostgreSQL database and one
  Redis, both started by this script. Readers here apply every update to their own
  pycrdt document (a gateway catching up from the log may merge updates), and a reader
  has converged when its text equals the writer's. One gateway (writer and 10 readers
  on A, B up) against two (writer on A, 10 readers on B), alternated; paced with 50
  readers; and Redis killed by pid halfway through a 2,000-update burst, timed until
  every reader on B has converged. Each case gets a fresh Redis and fresh gateways.

Flat out: the writer keeps at most ``WINDOW`` updates ahead of the slowest reader (so
queues stay bounded and nobody is closed for being slow); throughput is room updates
per second, first send to the last reader's last receive. Paced: 100 updates/s with
50 readers; latency is receive time minus send time (one monotonic clock: every
client runs in this process). Servers run in their own processes. Cases that do not
finish (a stalled reader, a gateway that fails) are reported INCOMPLETE with the
reason, and their figures are left out (null) rather than the run hanging.

    python benchmarks/fanout.py [--quick] [--trace NAME|PATH] [--traces-dir DIR] [--reps N] [--non-ascii]

The trace is automerge-paper (josephg/editing-traces) from ``--traces-dir`` or
``$SYNCLINE_TRACES_DIR`` (default ``../shared/data/traces/``); where it is missing, a
trace of the same size generated from a fixed seed stands in (benchmarks/_trace_updates.py,
``open_trace``), and the run says which: the first line and ``trace`` in the JSON.

``--quick``: 2,000 updates flat out, 500 paced, one repetition; the reader counts (and
so every key) are the same as in a full run, and ``quick``, ``updates``,
``paced_updates`` say what was measured.

Last line: JSON with ``yjs_n10_updates_per_s``, ``anchor_n10_updates_per_s``,
``ratio_vs_anchor_n10``, ``paced_n50_p99_ms``, ``anchor_paced_n50_p99_ms``,
``ratio_vs_node_n10``, ``cross_gateway_ratio``, ``cross_gateway_paced_p99_ms``,
``redis_outage_converge_s`` and the figures behind them.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from _trace_updates import TRACES_ENV, open_trace  # noqa: E402

DEFAULT_TRACE = "automerge-paper.json.gz"  # a name in the traces folder, or a path (open_trace)
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
WINDOW = 256
STALL_S = 30.0  # no reader progress for this long: the case ends, reported INCOMPLETE
OUT = ROOT / "benchmarks/out"
# Node's y-websocket server, at exact versions. 0.1.5 (npm's "latest" today) requires a
# yjs 14 pre-release; 0.1.1 is the newest on the stable yjs 13 line that y-websocket 3 uses.
NODE_PACKAGES = ("@y/websocket-server@0.1.1", "yjs@13.6.33")
# Two gateways on PostgreSQL + Redis: a reader that stops progressing for this long ends
# the case (reported INCOMPLETE), and after a Redis kill the readers get this long past
# the writer's last send to converge.
CROSS_STALL_S = 10.0
OUTAGE_WAIT_S = 15.0
OUTAGE_UPDATES = 2_000


# -- servers -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def token(user: str = "bench", tenant: str = "bench", ttl_s: int = 7200) -> str:
    import jwt

    return jwt.encode({"sub": user, "tenant": tenant, "roles": ["member"], "exp": int(time.time()) + ttl_s},
                      SECRET, algorithm="HS256")


class Server:
    """A server in its own process; ``kind`` is ``syncline``, ``anchor`` or ``node``.

    ``syncline`` runs ``syncline serve`` on a SQLite file of its own, or on ``db`` (and
    ``redis``) when given; ``node`` runs ``@y/websocket-server`` installed in ``node_dir``."""

    def __init__(self, kind: str, ws: str = "auto", tmp: Path | None = None, env: dict | None = None, *,
                 db: str | None = None, redis: str | None = None, node_dir: Path | None = None,
                 name: str | None = None) -> None:
        self.kind, self.ws = kind, ws
        self.db, self.redis, self.node_dir, self.name = db, redis, node_dir, name
        self.port = free_port()
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="fanout-"))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.kind if self.kind in ("anchor", "node") else f"syncline/{self.ws}"

    def url(self, path: str) -> str:
        if self.kind in ("anchor", "node"):  # the room is the path; the token is ignored by node
            return f"ws://127.0.0.1:{self.port}/{path.rsplit('/', 1)[-1]}"
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> Server:
        env = dict(os.environ, PYTHONPATH=str(ROOT), SYNCLINE_JWT_SECRET=SECRET,
                   SYNCLINE_RATE_LIMIT_MESSAGES="100000000", SYNCLINE_LOG_FORMAT="json",
                   SYNCLINE_PRUNE_INTERVAL_S="0",
                   # readers here never send (no heartbeats): not stale in a long flat-out case
                   SYNCLINE_STALE_AFTER_S="3600",
                   # one user holds every reader, and the writer sends flat out: the per-user
                   # and per-IP caps and the Yjs rate (docs/security.md#limits) are lifted
                   SYNCLINE_WS_MAX_CONNECTIONS_PER_USER="0", SYNCLINE_WS_MAX_CONNECTIONS_PER_IP="0",
                   SYNCLINE_YJS_RATE_MESSAGES_BURST="0", SYNCLINE_YJS_RATE_BYTES_BURST="0")
        env.update(self.env)
        if self.kind == "anchor":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-anchor", str(self.port)]
        elif self.kind == "node":
            env.update(HOST="127.0.0.1", PORT=str(self.port))
            cmd = ["node", str(self.node_dir / "node_modules/@y/websocket-server/src/server.js")]
        else:
            db = self.db or f"sqlite+aiosqlite:///{self.tmp}/syncline-{self.port}.db"
            cmd = [*syncline_command(), "serve", "--port", str(self.port), "--db", db]
            if self.ws != "default":
                cmd += ["--ws", self.ws]
            if self.redis:
                cmd += ["--redis", self.redis]
        self.log = open(self.tmp / f"{self.kind}-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        # preexec_fn: the server needs the open-files limit raised; no threads run yet here.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile)  # noqa: PLW1509
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    time.sleep(0.3)  # past the accept loop: the app has finished its startup
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.label} did not start")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (/proc); 0 once it is gone."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def syncline_command() -> list[str]:
    """The ``syncline`` command of this tree, run from source like the tests. Its CLI
    module has moved (``cli/__init__.py``, then under the ``syncline`` package), so it is
    looked for rather than assumed."""
    for module, rel in (("syncline.cli", "syncline/cli"), ("cli", "cli"), ("api.cli", "api/cli")):
        if (ROOT / f"{rel}.py").exists() or (ROOT / rel / "__init__.py").exists():
            return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]
    return [shutil.which("syncline") or "syncline"]


def serve_anchor(port: int) -> None:
    """pycrdt-websocket as its README runs it: ASGIServer(WebsocketServer()) under uvicorn,
    default rooms (in-memory, no YStore). Tokens are checked in ``on_connect`` so the
    anchor does the same authentication work as Syncline."""
    import jwt
    import uvicorn
    from pycrdt.websocket import ASGIServer, WebsocketServer

    raise_nofile()

    def on_connect(msg: dict, scope: dict) -> bool:
        qs = dict(p.split("=", 1) for p in scope.get("query_string", b"").decode().split("&") if "=" in p)
        try:
            jwt.decode(qs.get("token", ""), SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return True  # refuse
        return False

    async def main() -> None:
        async with WebsocketServer(log=None) as ws_server:
            app = ASGIServer(ws_server, on_connect=on_connect)
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None)
            await uvicorn.Server(config).serve()

    asyncio.run(main())


# -- PostgreSQL, Redis and Node's server, started for this run -------------------


def _run_as() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def throwaway_postgres(tmp: Path) -> Iterator[str]:
    """A PostgreSQL on a free loopback port (as the ``postgres`` user when we are root),
    fsync and synchronous commit on (the defaults): yields an asyncpg URL of its
    ``postgres`` database; stopped and removed on the way out."""
    bins = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    bins += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    pg_bin = next((b for b in bins if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)
    if pg_bin is None:
        raise RuntimeError("no initdb/pg_ctl on PATH or under /usr/lib/postgresql")
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="fanout-pg-", dir=tmp))
    data, log = base / "pgdata", base / "postgres.log"
    started = False
    try:
        base.chmod(0o755)
        tmp.chmod(0o755)
        data.mkdir(mode=0o700)
        log.touch()
        if run_as:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(log, "postgres", "postgres")
        subprocess.run([*run_as, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True)
        port = free_port()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data}'\n"
                       "max_connections = 300\nlogging_collector = off\n")
        subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
                       check=True, capture_output=True)
        started = True
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                           capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


class RedisServer:
    """A ``redis-server`` of our own (no persistence), which a case may kill by pid."""

    def __init__(self) -> None:
        self.binary = os.environ.get("SYNCLINE_TEST_REDIS_SERVER") or shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("no redis-server (SYNCLINE_TEST_REDIS_SERVER or PATH)")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL by pid: no goodbye to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


def install_node_server(tmp: Path) -> tuple[Path | None, dict]:
    """``@y/websocket-server`` (and its peer ``yjs``) at exact versions, from npm into a
    temp dir. Returns (dir, versions actually installed), or (None, {"error": ...})."""
    if not shutil.which("node") or not shutil.which("npm"):
        return None, {"error": "node or npm not on PATH"}
    d = tmp / "node-server"
    d.mkdir(exist_ok=True)
    (d / "package.json").write_text('{"name": "fanout-node-server", "private": true}')
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--save-exact", *NODE_PACKAGES]
    try:
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return None, {"error": "npm install timed out"}
    if r.returncode != 0:
        return None, {"error": f"npm install failed: {r.stderr.strip()[-300:]}"}
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    versions = {"node": node.stdout.strip()}
    for pkg in ("@y/websocket-server", "yjs", "y-protocols", "ws"):
        try:
            versions[pkg] = json.loads((d / "node_modules" / pkg / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            versions[pkg] = None
    return d, versions


def readyz(server: Server) -> str:
    """``/readyz`` of a gateway in one line (status and Redis state), for the record."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=3) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    except Exception as e:  # noqa: BLE001 - only for the printout
        return f"unreachable ({type(e).__name__})"
    redis = body.get("dependencies", {}).get("redis", {})
    return f"{body.get('status')} redis={redis.get('state')} degradations={body.get('degradations')}"


# -- the load ------------------------------------------------------------------


# Letters swapped for 2-, 3- and 4-byte UTF-8 characters by ``--non-ascii``.
NON_ASCII = str.maketrans({"e": "é", "o": "ø", "a": "ä", "s": "ß", "t": "€", "i": "😀"})


@dataclass
class Load:
    """The writer's updates, made before any clock starts."""

    updates: list[bytes]
    clocks: list[int]  # the writer's Yjs clock after each update (a delete-only update keeps it)
    client_id: int
    non_ascii: bool = False

    def prefix(self, n: int) -> Load:
        return Load(self.updates[:n], self.clocks[:n], self.client_id, self.non_ascii)

    def text(self) -> str:
        """The writer's text after the last update, rebuilt from the updates."""
        import pycrdt

        doc = pycrdt.Doc()
        text = doc.get("text", type=pycrdt.Text)
        for u in self.updates:
            doc.apply_update(u)
        return str(text)


def utf8_index(s: str, pos: int) -> int:
    """pycrdt's ``Text`` index of character position ``pos`` of ``s``.

    pycrdt (yrs with byte offsets) counts ``Text`` indices in UTF-8 bytes, not in
    characters: on ``"héllo"`` index 2 falls inside ``é``, and an insert there makes an
    update that names itself as its own neighbour (issue 19 C). Checked on pycrdt 0.14:
    ``len(text)`` of ``"héllo wörld"`` is 13, ``text.insert(3, "Y")`` after ``"hé"``
    gives ``"héYllo…"``, ``del text[0:3]`` removes ``"hé"``, and on ``"a😀b"`` index 5
    is after the emoji."""
    return pos if s.isascii() else len(s[:pos].encode())


def state_clock(state_vector: bytes, client_id: int) -> int:
    """The clock of ``client_id`` in an encoded Yjs state vector (0 if absent)."""
    i = 0

    def read() -> int:
        nonlocal i
        value = shift = 0
        while True:
            b = state_vector[i]
            i += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    for _ in range(read()):
        client, clock = read(), read()
        if client == client_id:
            return clock
    return 0


def keystroke_load(trace: dict, n: int, *, non_ascii: bool = False) -> Load:
    """One Yjs update per keystroke (patch) of the trace (``open_trace``), in order.

    The trace's positions are characters; pycrdt's ``Text`` indices are UTF-8 bytes, so
    each position is converted against a mirror of the text (:func:`utf8_index`), and the
    document's text is checked against the mirror at the end. ``non_ascii`` swaps some
    letters for multi-byte characters (NON_ASCII) to exercise that conversion."""
    import pycrdt

    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    updates: list[bytes] = []
    clocks: list[int] = []
    doc.observe(lambda e: updates.append(e.update))
    mirror = ""
    client_id = doc.client_id

    def done() -> Load:
        if str(text) != mirror:
            raise AssertionError("keystroke_load: pycrdt text differs from the trace's text (position conversion)")
        return Load(updates[:n], clocks[:n], client_id, non_ascii)

    for txn in trace["txns"]:
        for pos, delete, insert in txn["patches"]:
            if non_ascii:
                insert = insert.translate(NON_ASCII)
            with doc.transaction():
                if delete:
                    del text[utf8_index(mirror, pos):utf8_index(mirror, pos + delete)]
                if insert:
                    text.insert(utf8_index(mirror, pos), insert)
            mirror = mirror[:pos] + insert + mirror[pos + delete:]
            if len(updates) > len(clocks):
                clocks.extend([state_clock(doc.get_state(), client_id)] * (len(updates) - len(clocks)))
            if len(updates) >= n:
                return done()
    return done()


def keystroke_updates(trace: dict, n: int, *, non_ascii: bool = False) -> list[bytes]:
    """One Yjs update per keystroke (patch) of the trace, in order."""
    return keystroke_load(trace, n, non_ascii=non_ascii).updates


def var_uint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def yjs_frames(updates: list[bytes]) -> list[bytes]:
    """y-websocket sync-update frames: ``[0 sync][2 update][var-uint length][update]``
    (built here, so the load does not depend on where the product's modules live)."""
    return [b"\x00\x02" + var_uint(len(u)) + u for u in updates]


def native_frames(updates: list[bytes], room: str) -> list[bytes]:
    import msgpack

    return [msgpack.packb({"t": "say", "room": room, "data": u}, use_bin_type=True) for u in updates]


@dataclass
class Result:
    server: str
    protocol: str
    readers: int
    updates: int
    seconds: float
    lat_ms: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    complete: bool = True
    min_count: int = 0
    paced: bool = False
    note: str = ""  # why a case is incomplete, or what else it measured
    converge_s: float | None = None  # Redis outage: kill → every reader's text equals the writer's

    @property
    def server_cpu_us(self) -> float:
        """Server CPU time per room update (all its deliveries included): unlike updates/s,
        this hardly depends on how much of a core a loaded machine leaves the server."""
        return self.server_cpu / self.updates * 1e6 if self.updates else 0.0

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.lat_ms:
            return float("nan")
        s = sorted(self.lat_ms)
        return s[min(len(s) - 1, int(q / 100 * len(s)))]


async def connect(url: str, subprotocols=None):
    import websockets

    return await websockets.connect(url, max_size=None, compression=None, ping_interval=None,
                                    subprotocols=subprotocols, open_timeout=60, close_timeout=2)


async def run_case(server: Server, protocol: str, frames_of, updates: list[bytes], readers: int,
                   rate: float | None, case_id: str) -> Result:
    """One writer and ``readers`` readers in a fresh room; flat out (``rate`` None) or paced."""
    import msgpack

    tok = token()
    room = f"fan-{case_id}"
    if protocol == "yjs":
        url = server.url(f"/v1/yjs/{room}") + f"?token={tok}"
        sub = None
    else:
        url = server.url("/v1/ws") + f"?token={tok}"
        sub = ["syncline.v1.msgpack"]
    frames = frames_of(updates, room) if protocol == "native" else frames_of(updates)
    n = len(frames)
    sent_at = [0.0] * n
    counts = [0] * readers
    lats: list[list[float]] = [[] for _ in range(readers)]
    progress = asyncio.Event()
    done = asyncio.Event()
    finished = [0]
    last_recv = [0.0]

    async def open_conn():
        ws = await connect(url, sub)
        if protocol == "native":
            await ws.send(msgpack.packb({"t": "join", "room": room}))
            while True:
                m = msgpack.unpackb(await ws.recv(), raw=False)
                if m.get("t") == "joined":
                    break
        return ws

    conns = await asyncio.gather(*(open_conn() for _ in range(readers)))
    writer = await open_conn()

    async def read(i: int, ws) -> None:
        lat, clock = lats[i], time.perf_counter
        k = 0
        try:
            async for frame in ws:
                if protocol == "yjs":
                    if frame[0] != 0 or frame[1] != 2:
                        continue
                elif b"\xa3msg" not in frame[:16]:
                    continue
                now = clock()
                lat.append((now - sent_at[k]) * 1000)
                k += 1
                counts[i] = k
                progress.set()
                if k == n:
                    last_recv[0] = max(last_recv[0], now)
                    finished[0] += 1
                    if finished[0] == readers:
                        done.set()
                    return
        except Exception:  # noqa: BLE001, S110 - a dead socket shows as INCOMPLETE (min count)
            pass

    async def drain_writer() -> None:  # the anchor and node echo updates to their writer
        with contextlib.suppress(Exception):
            async for _ in writer:
                pass

    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(conns)]
    drainer = asyncio.create_task(drain_writer())
    await asyncio.sleep(0.2)
    cpu0, ccpu0 = server.cpu_s(), time.process_time()
    t0 = time.perf_counter()
    clock = time.perf_counter
    stalled = False
    for k, frame in enumerate(frames):
        if rate is not None:
            due = t0 + k / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
        elif k >= WINDOW:
            while k - min(counts) >= WINDOW and not stalled:
                progress.clear()
                try:  # a reader that stops receiving (a lost update, a dead socket) must not hang the run
                    await asyncio.wait_for(progress.wait(), STALL_S)
                except TimeoutError:
                    stalled = True
            if stalled:
                break
        sent_at[k] = clock()
        await writer.send(frame)
    complete = not stalled
    # Wait for every reader's last update: at most 60 + n/200 s, and no longer than STALL_S
    # without any reader progressing (a reader a server never serves must not hold the run).
    deadline = clock() + 60 + n / 200
    while complete and not done.is_set():
        progress.clear()
        wait = min(STALL_S, deadline - clock())
        if wait <= 0:
            complete = False
            break
        try:
            await asyncio.wait_for(progress.wait(), wait)
        except TimeoutError:
            complete = done.is_set()
    if not complete:
        last_recv[0] = clock()
    seconds = last_recv[0] - t0
    res = Result(server.label, protocol, readers, n, seconds, [x for lat in lats for x in lat],
                 server.cpu_s() - cpu0, time.process_time() - ccpu0, complete, min(counts))
    for t in tasks:
        t.cancel()
    drainer.cancel()
    await asyncio.gather(*(ws.close() for ws in [*conns, writer]), return_exceptions=True)
    await asyncio.gather(*tasks, drainer, return_exceptions=True)
    return res


def sync_payload(frame: bytes) -> bytes:
    """The update of a y-websocket sync frame ``[0][1 or 2][var-uint length][update]``."""
    i, shift, length = 2, 0, 0
    while True:
        b = frame[i]
        i += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            return frame[i:i + length]
        shift += 7


class YReader:
    """A reader that applies what it receives to its own pycrdt document.

    Counting frames is not enough across gateways: a gateway that catches up from the log
    may send several updates merged into one, or one twice. Each received update is
    therefore applied, and matched to the writer's update it is (same bytes) when it is
    one; otherwise, every sent update at or under the reader's clock for the writer counts
    as received (a delete-only update then counts with the next frame after its send).
    The reader has *converged* when its text equals the writer's final text."""

    def __init__(self, load: Load, index: dict[bytes, int], sent_at: list[float], final: str) -> None:
        import pycrdt

        self.load, self.index, self.sent_at, self.final = load, index, sent_at, final
        self.n = len(load.updates)
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.got = bytearray(self.n)
        self.upto = 0  # updates 0..upto-1 all received
        self.lat: list[float] = []
        self.frames = 0
        self.merged = 0  # frames that were not one of the writer's updates byte for byte
        self.checked_frames = -1
        self.last_frame_at = 0.0
        self.converged_at: float | None = None
        self.error = ""

    def on_update(self, update: bytes, now: float) -> None:
        try:
            self.doc.apply_update(update)
        except Exception as e:  # noqa: BLE001 - a bad update is reported, not fatal
            self.error = f"apply_update: {e!r}"[:200]
            return
        self.frames += 1
        self.last_frame_at = now
        got, sent_at = self.got, self.sent_at
        k = self.index.get(update)
        if k is not None:
            if not got[k]:
                got[k] = 1
                self.lat.append((now - sent_at[k]) * 1000)
        else:
            self.merged += 1
            clock = state_clock(self.doc.get_state(), self.load.client_id)
            clocks = self.load.clocks
            for k in range(self.upto, self.n):
                if not sent_at[k] or clocks[k] > clock:
                    break
                if not got[k]:
                    got[k] = 1
                    self.lat.append((now - sent_at[k]) * 1000)
        while self.upto < self.n and got[self.upto]:
            self.upto += 1
        if self.upto == self.n and self.converged_at is None:
            self.check()

    def check(self) -> bool:
        """Text equal to the writer's? (Only re-read when something arrived since.)"""
        if self.converged_at is None and self.frames != self.checked_frames:
            self.checked_frames = self.frames
            if str(self.text) == self.final:
                self.converged_at = self.last_frame_at
        return self.converged_at is not None


async def run_log_case(writer_at: Server, readers_at: Server, load: Load, readers: int, rate: float | None,
                       case_id: str, label: str, *, redis: RedisServer | None = None,
                       cpu_of: tuple[Server, ...] = ()) -> Result:
    """One writer on ``writer_at``, ``readers`` :class:`YReader` on ``readers_at``, in a fresh
    room; flat out within WINDOW of the slowest reader, or paced at ``rate``.

    With ``redis``: the Redis outage case. A witness reader on the writer's gateway sets
    the window (the readers across the gateway may stall while Redis is gone), Redis is
    killed by pid when half the updates are sent, and the result's ``converge_s`` is the
    time from the kill until every reader's text equals the writer's."""
    tok = token()
    room = f"fan-{case_id}"
    path = f"/v1/yjs/{room}?token={tok}"
    n = len(load.updates)
    frames = yjs_frames(load.updates)
    index = {u: k for k, u in enumerate(load.updates)}
    final = load.text()
    sent_at = [0.0] * n
    clock = time.perf_counter
    progress = asyncio.Event()
    yreaders = [YReader(load, index, sent_at, final) for _ in range(readers)]
    witness = YReader(load, index, sent_at, final) if redis else None
    window_of = [witness] if witness else yreaders
    everyone = yreaders + ([witness] if witness else [])

    conns = await asyncio.gather(*(connect(readers_at.url(path)) for _ in yreaders))
    wconn = await connect(writer_at.url(path)) if witness else None
    writer = await connect(writer_at.url(path))

    async def read(r: YReader, ws) -> None:
        try:
            async for frame in ws:
                if type(frame) is str or len(frame) < 3 or frame[0] != 0 or frame[1] == 0:
                    continue  # sync step 1 and awareness: nothing to apply
                r.on_update(sync_payload(frame), clock())
                progress.set()
                if r.converged_at is not None:
                    return
        except Exception as e:  # noqa: BLE001 - a dead socket is reported as INCOMPLETE
            r.error = r.error or f"{type(e).__name__}: {e}"[:200]

    async def drain_writer() -> None:
        with contextlib.suppress(Exception):
            async for _ in writer:
                pass

    tasks = [asyncio.create_task(read(r, ws)) for r, ws in zip(yreaders, conns)]
    if witness:
        tasks.append(asyncio.create_task(read(witness, wconn)))
    drainer = asyncio.create_task(drain_writer())
    await asyncio.sleep(0.2)
    cpu_servers = cpu_of or tuple({id(s): s for s in (writer_at, readers_at)}.values())
    cpu0, ccpu0 = sum(s.cpu_s() for s in cpu_servers), time.process_time()
    t0 = clock()
    stalled = False
    t_kill: float | None = None
    note = ""
    for k, frame in enumerate(frames):
        if rate is not None:
            delay = t0 + k / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
        elif k >= WINDOW:
            while k - min(r.upto for r in window_of) >= WINDOW and not stalled:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), CROSS_STALL_S)
                except TimeoutError:
                    stalled = True
            if stalled:
                note = f"writer stalled at {k}/{n}: no reader progress for {CROSS_STALL_S:.0f} s"
                break
        if redis is not None and k == n // 2:
            redis.kill()
            t_kill = clock()
        sent_at[k] = clock()
        try:
            await writer.send(frame)
        except Exception as e:  # noqa: BLE001
            note = f"writer closed at {k}/{n}: {type(e).__name__}"
            stalled = True
            break
    t_sent = clock()
    # Wait for every reader's text to equal the writer's: until nobody has progressed for
    # CROSS_STALL_S (flat out / paced) or OUTAGE_WAIT_S past the last send (outage).
    last_seen, last_change = -1, clock()
    while not stalled:
        for r in yreaders:
            r.check()
        if all(r.converged_at is not None for r in yreaders):
            break
        seen = sum(r.frames for r in everyone)
        now = clock()
        if seen != last_seen:
            last_seen, last_change = seen, now
        if redis is not None and now - t_sent > OUTAGE_WAIT_S:
            note = f"did not converge within {OUTAGE_WAIT_S:.0f} s of the last send"
            break
        if redis is None and now - last_change > CROSS_STALL_S:
            note = f"did not converge: no reader progress for {CROSS_STALL_S:.0f} s"
            break
        await asyncio.sleep(0.02)
    complete = all(r.converged_at is not None for r in yreaders)
    end = max(r.converged_at for r in yreaders) if complete else clock()
    if not complete:
        behind = [r for r in yreaders if r.converged_at is None]
        errors = sorted({r.error for r in yreaders if r.error})
        note = (f"{note or 'did not converge'}; {len(behind)} of {readers} readers not converged, "
                f"the slowest has {min(r.upto for r in yreaders)}/{n} updates"
                + (f"; errors: {errors[:2]}" if errors else ""))
    res = Result(label, "yjs", readers, n, end - t0, [x for r in yreaders for x in r.lat],
                 sum(s.cpu_s() for s in cpu_servers) - cpu0, time.process_time() - ccpu0, complete,
                 min(r.upto for r in yreaders), paced=rate is not None, note=note)
    merged = sum(r.merged for r in yreaders)
    if merged:  # what came as the writer's own updates, and what as merged ones (from the log)
        res.note = "; ".join(x for x in (res.note, f"{merged} of {sum(r.frames for r in yreaders)} frames merged")
                             if x)
    if t_kill is not None and complete:
        res.converge_s = end - t_kill
        killed = (f"Redis killed after {n // 2} sends; converged {end - t_kill:.2f} s after the kill, "
                  f"{end - t_sent:.2f} s after the last send")
        res.note = "; ".join(x for x in (killed, res.note) if x)
    for t in tasks:
        t.cancel()
    drainer.cancel()
    await asyncio.gather(*(ws.close() for ws in [*conns, writer, *([wconn] if wconn else [])]),
                         return_exceptions=True)
    await asyncio.gather(*tasks, drainer, return_exceptions=True)
    return res


# -- main ----------------------------------------------------------------------


def median_result(rs: list[Result]) -> Result:
    rs = sorted(rs, key=lambda r: r.updates_per_s)
    return rs[len(rs) // 2]


def median_complete(rs: list[Result]) -> Result | None:
    """The median of the complete repetitions (None if none completed)."""
    done = [r for r in rs if r.complete]
    return median_result(done) if done else None


def case_line(r: Result) -> str:
    """One printed line per case."""
    kind = "paced 100/s " if r.paced else ""
    if not r.complete:
        return (f"  {r.server:28} {r.protocol:6} {kind}n={r.readers:<3} "
                f"INCOMPLETE (min {r.min_count}/{r.updates}): {r.note}")
    secs = r.seconds or float("nan")
    head = (f"p50 {r.pct(50):.2f} ms  p99 {r.pct(99):.2f} ms" if r.paced else
            f"{r.updates_per_s:8.0f} upd/s  p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms")
    line = (f"  {r.server:28} {r.protocol:6} {kind}n={r.readers:<3} {head}  server cpu {r.server_cpu / secs:4.0%} "
            f"({r.server_cpu_us:4.0f} us/upd)  client cpu {r.client_cpu / secs:4.0%}")
    return line + (f"  [{r.note}]" if r.note else "")


@contextlib.contextmanager
def gateway_pair(tmp: Path, pg_url: str, ws: str) -> Iterator[tuple[RedisServer, Server, Server]]:
    """A fresh Redis and two fresh ``syncline serve`` processes on the one database: no
    state (a hub marked down, a room) carries from one case into the next."""
    redis = RedisServer()
    a = Server("syncline", ws, tmp, db=pg_url, redis=redis.url, name="pg+redis A")
    b = Server("syncline", ws, tmp, db=pg_url, redis=redis.url, name="pg+redis B")
    try:
        redis.start()
        a.start()  # A migrates the database first; B then finds nothing to do
        b.start()
        yield redis, a, b
    finally:
        b.stop()
        a.stop()
        redis.stop()


async def two_gateway_cases(console, tmp: Path, load: Load, n_paced: int, reps: int,
                            next_id) -> dict[str, list[Result]]:
    """The PostgreSQL + Redis cases: one gateway (writer and readers on A, B up and idle)
    against two (writer on A, readers on B), flat out with 10 readers, paced with 50, and
    the Redis outage. Each case gets a fresh Redis and fresh gateways."""
    out: dict[str, list[Result]] = {k: [] for k in ("one", "cross", "one_paced", "cross_paced", "outage")}
    with throwaway_postgres(tmp) as pg_url:
        console.print("  PostgreSQL + Redis started for the two-gateway cases "
                      "(gateways: syncline serve's default --ws)")

        async def case(key: str, label: str, cross: bool, readers: int, rate: float | None, case_load: Load,
                       outage: bool = False) -> Result:
            try:
                with gateway_pair(tmp, pg_url, "default") as (redis, a, b):
                    r = await run_log_case(a, b if cross else a, case_load, readers, rate, next_id(), label,
                                           redis=redis if outage else None, cpu_of=(a, b))
                    dead = [f"{g.label} exited with {g.proc.returncode} (log {g.log.name})"
                            for g in (a, b) if g.proc.poll() is not None]
                    if dead:
                        r.note = "; ".join([r.note, *dead]) if r.note else "; ".join(dead)
                    if outage:
                        r.note += f"; B /readyz after: {readyz(b)}"
            except Exception as e:  # noqa: BLE001 - a gateway that fails to start fails its case, not the run
                r = Result(label, "yjs", readers, len(case_load.updates), 0.0, complete=False,
                           paced=rate is not None, note=f"case failed: {e!r}"[:300])
            console.print(case_line(r))
            out[key].append(r)
            return r

        n10 = 10
        for _ in range(reps):  # one and two gateways alternate, so load drift hits both alike
            await case("one", "pg+redis one gateway", False, n10, None, load)
            await case("cross", "pg+redis A→B", True, n10, None, load)
        await case("one_paced", "pg+redis one gateway", False, 50, 100.0, load.prefix(n_paced))
        await case("cross_paced", "pg+redis A→B", True, 50, 100.0, load.prefix(n_paced))
        for _ in range(reps):
            await case("outage", "pg+redis A→B, Redis killed", True, n10, None, load.prefix(OUTAGE_UPDATES),
                       outage=True)
    return out


async def bench(args) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=160)
    raise_nofile()
    n_updates = 2_000 if args.quick else 20_000
    n_paced = 500 if args.quick else 3_000
    reps = args.reps or (1 if args.quick else 3)
    readers_list = [1, 10, 50]
    only = set(args.only.split(",")) if args.only else None
    t = time.perf_counter()
    trace, trace_label = open_trace(args.trace)
    load = keystroke_load(trace, n_updates, non_ascii=args.non_ascii)
    updates = load.updates
    console.print(f"{len(updates)} keystroke updates from {trace_label}"
                  f"{' (letters swapped for multi-byte characters)' if args.non_ascii else ''} in "
                  f"{time.perf_counter() - t:.2f} s (mean {statistics.mean(map(len, updates)):.0f} bytes); "
                  f"load avg {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    node_dir, node_versions = None, {"error": "not run (--only)"}
    if only is None or "node" in only:
        node_dir, node_versions = install_node_server(tmp)
        console.print(f"  Node server: {' '.join(NODE_PACKAGES)} -> {node_versions}")
    # Node's server right after ours (lean, the default): the ratio between them is the
    # least exposed to the machine's load drifting during the run.
    servers = [Server("syncline", "lean", tmp)]
    if node_dir is not None:
        servers.append(Server("node", tmp=tmp, node_dir=node_dir))
    servers += [Server("syncline", "websockets", tmp), Server("syncline", "websockets-sansio", tmp),
                Server("anchor", tmp=tmp)]
    if only is not None:
        servers = [s for s in servers if s.label in only]
    results: list[Result] = []
    paced: list[Result] = []
    failed_servers: list[str] = []
    case = 0

    def next_id() -> str:
        nonlocal case
        case += 1
        return f"{os.getpid()}-{case}"

    try:
        for s in servers:
            try:
                s.start()
            except Exception as e:  # noqa: BLE001 - one server that fails to start skips its cases only
                console.print(f"  {s.label:28} did not start, its cases are skipped: {e}")
                failed_servers.append(f"{s.label}: {e}"[:240])
                s.stop()
                continue
            protocols = ["yjs"] if s.kind in ("anchor", "node") else ["yjs", "native"]
            for proto in protocols:
                frames_of = yjs_frames if proto == "yjs" else native_frames
                for readers in readers_list:
                    reps_here = []
                    for _ in range(reps if readers < 50 else 1):  # n=50 once: it is the long one
                        r = await run_case(s, proto, frames_of, updates, readers, None, next_id())
                        if not r.complete:  # seen with the anchor: one reader of a fresh room never served
                            console.print(f"  {s.label:28} {proto:6} n={readers:<3} INCOMPLETE (min {r.min_count}); "
                                          "one retry in a fresh room")
                            r = await run_case(s, proto, frames_of, updates, readers, None, next_id())
                        reps_here.append(r)
                        console.print(case_line(r))
                    results.append(median_result(reps_here))
                r = await run_case(s, proto, frames_of, updates[:n_paced], 50, 100.0, next_id())
                if not r.complete:  # the anchor again, at times: one retry in a fresh room
                    console.print(f"  {s.label:28} {proto:6} paced 100/s n=50 INCOMPLETE (min {r.min_count}); "
                                  "one retry in a fresh room")
                    r = await run_case(s, proto, frames_of, updates[:n_paced], 50, 100.0, next_id())
                r.paced = True
                console.print(case_line(r))
                paced.append(r)
            s.stop()
    finally:
        for s in servers:
            s.stop()

    two: dict[str, list[Result]] = {}
    if only is None or "pg-redis" in only:
        console.print("Two gateways on PostgreSQL + Redis (readers apply every update; converged = text equal):")
        try:
            two = await two_gateway_cases(console, tmp, load, n_paced, reps, next_id)
        except Exception as e:  # noqa: BLE001 - e.g. no PostgreSQL here: the other figures still count
            console.print(f"  two-gateway cases not run: {e!r}")
            two = {"error": [Result("pg+redis", "yjs", 0, 0, 0.0, complete=False, note=repr(e)[:300])]}

    table = Table(title=f"Fan-out, {n_updates} keystroke updates (flat out, window {WINDOW}); median of {reps}")
    for col in ("server", "protocol", "readers", "room updates/s", "deliveries/s", "p50 ms", "p99 ms",
                "server CPU", "server us/upd", "client CPU"):
        table.add_column(col, justify="right" if col not in ("server", "protocol") else "left")
    two_rows = [r for key in ("one", "cross") if two.get(key) for r in [median_complete(two[key]) or two[key][0]]]
    two_rows += [r for key in ("one_paced", "cross_paced") for r in two.get(key, [])]
    for r in results + paced + two_rows:
        label = f"{r.readers}" + (" paced 100/s" if r.paced else "")
        if not r.complete:
            table.add_row(r.server, r.protocol, label, "INCOMPLETE", f"min {r.min_count}/{r.updates}",
                          *([""] * 5))
            continue
        table.add_row(r.server, r.protocol, label, f"{r.updates_per_s:,.0f}", f"{r.updates_per_s * r.readers:,.0f}",
                      f"{r.pct(50):.2f}", f"{r.pct(99):.2f}", f"{r.server_cpu / r.seconds:.0%}",
                      f"{r.server_cpu_us:.0f}", f"{r.client_cpu / r.seconds:.0%}")
    console.print(table)
    outage = two.get("outage", [])
    if outage:
        console.print("Redis killed mid-burst (" + f"{OUTAGE_UPDATES} updates, 10 readers on B): "
                      + "; ".join(f"{r.converge_s:.2f} s" if r.converge_s is not None else "did not converge"
                                  for r in outage))

    def pick(server: str, proto: str, readers: int, from_=results) -> Result | None:
        return next((r for r in from_ if r.server == server and r.protocol == proto and r.readers == readers), None)

    def rnd(x: float | None, nd: int = 0):
        if x is None:
            return None
        return round(x) if nd == 0 else round(x, nd)

    def ups(r: Result | None) -> float | None:
        return r.updates_per_s if r is not None and r.complete else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    def p99(r: Result | None) -> float | None:
        return round(r.pct(99), 2) if r is not None and r.complete and r.lat_ms else None

    lean = pick("syncline/lean", "yjs", 10)
    default = pick("syncline/websockets", "yjs", 10)
    sansio = pick("syncline/websockets-sansio", "yjs", 10)
    ours = [r for r in (lean, default, sansio) if r is not None]
    best = max(ours, key=lambda r: r.updates_per_s) if ours else None
    anchor = pick("anchor", "yjs", 10)
    node = pick("node", "yjs", 10)
    paced_best = pick(best.server, "yjs", 50, paced) if best else None
    one = median_complete(two.get("one", []))
    cross = median_complete(two.get("cross", []))
    cross_paced = median_complete(two.get("cross_paced", []))
    one_paced = median_complete(two.get("one_paced", []))
    converged = sorted(r.converge_s for r in outage if r.converge_s is not None)
    if results or paced:
        plot(results, paced, OUT / "fanout.png")
    two_all = [r for rs in two.values() for r in rs]
    summary = {
        "trace": trace_label,
        "yjs_n10_updates_per_s": rnd(ups(best)),
        "anchor_n10_updates_per_s": rnd(ups(anchor)),
        "ratio_vs_anchor_n10": ratio(ups(best), ups(anchor)),
        "paced_n50_p99_ms": p99(paced_best),
        "anchor_paced_n50_p99_ms": p99(pick("anchor", "yjs", 50, paced)),
        "ws_impl": best.server.split("/", 1)[1] if best else None,
        "yjs_n10_updates_per_s_lean": rnd(ups(lean)),
        "yjs_n10_updates_per_s_websockets": rnd(ups(default)),
        "yjs_n10_updates_per_s_sansio": rnd(ups(sansio)),
        "native_n10_updates_per_s": rnd(ups(pick(best.server, "native", 10))) if best else None,
        "yjs_n10_server_cpu_us_per_update": round(best.server_cpu_us, 1) if best else None,
        "anchor_n10_server_cpu_us_per_update": round(anchor.server_cpu_us, 1) if anchor else None,
        # Node's @y/websocket-server, single gateway, in-memory rooms (as the anchor)
        "ratio_vs_node_n10": ratio(ups(best), ups(node)),
        "node_n10_updates_per_s": rnd(ups(node)),
        "node_paced_n50_p99_ms": p99(pick("node", "yjs", 50, paced)),
        "node_n10_server_cpu_us_per_update": round(node.server_cpu_us, 1) if node else None,
        "node_server": node_versions,
        # Two gateways on PostgreSQL + Redis, every update appended before it is relayed
        "cross_gateway_ratio": ratio(ups(cross), ups(one)),
        "cross_gateway_paced_p99_ms": p99(cross_paced),
        "redis_outage_converge_s": round(statistics.median(converged), 2) if converged else None,
        "cross_gateway_n10_updates_per_s": rnd(ups(cross)),
        "one_gateway_pg_redis_n10_updates_per_s": rnd(ups(one)),
        "one_gateway_pg_redis_paced_n50_p99_ms": p99(one_paced),
        "redis_outage_converged_reps": f"{len(converged)}/{len(outage)}",
        "cross_gateway_notes": sorted({f"{r.server}{' paced' if r.paced else ''}: {r.note}"[:240]
                                       for r in two_all if not r.complete}),
        "servers_not_started": failed_servers,
        "incomplete_cases": [f"{r.server}/{r.protocol}/n{r.readers}{'/paced' if r.paced else ''}"
                             for r in results + paced + two_all if not r.complete],
        "quick": bool(args.quick),
        "non_ascii": bool(args.non_ascii),
        "updates": n_updates,
        "paced_updates": n_paced,
        "outage_updates": OUTAGE_UPDATES,
        "reps": reps,
        "python": platform.python_version(),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    return summary


def plot(results: list[Result], paced: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[Result]] = {}
    for r in results:
        series.setdefault(f"{r.server} {r.protocol}", []).append(r)
    for name, rs in series.items():
        a.plot([r.readers for r in rs], [r.updates_per_s for r in rs], marker="o", label=name)
    a.set_xscale("log")
    a.set_xlabel("readers")
    a.set_ylabel("room updates/s (flat out)")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    names = [f"{r.server}\n{r.protocol}" for r in paced]
    x = range(len(paced))
    b.bar([i - 0.2 for i in x], [r.pct(50) for r in paced], 0.4, label="p50")
    b.bar([i + 0.2 for i in x], [r.pct(99) for r in paced], 0.4, label="p99")
    b.axhline(8, color="red", linestyle="--", linewidth=1, label="target p99 8 ms")
    b.set_xticks(list(x), names, fontsize=7)
    b.set_ylabel("writer→reader latency, ms (100 updates/s, 50 readers)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trace", default=DEFAULT_TRACE,
                   help="a trace name in the traces folder or a path (default %(default)s)")
    p.add_argument("--traces-dir", default=None,
                   help=f"folder with the real traces (default ${TRACES_ENV} or ../shared/data/traces); "
                   "a missing one is generated from a fixed seed")
    p.add_argument("--reps", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated cases to run (debugging): syncline/lean, node, "
                   "syncline/websockets, syncline/websockets-sansio, anchor, pg-redis")
    p.add_argument("--non-ascii", action="store_true",
                   help="swap some letters of the trace for 2- to 4-byte UTF-8 characters")
    p.add_argument("--serve-anchor", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.traces_dir is not None:
        os.environ[TRACES_ENV] = args.traces_dir
    if args.serve_anchor:
        serve_anchor(args.serve_anchor)
        return
    summary = asyncio.run(bench(args))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
