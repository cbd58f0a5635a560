"""Yjs room fan-out: one writer, N readers, Syncline vs pycrdt-websocket.

The writer sends the first 20,000 keystrokes of the automerge-paper editing trace as
y-websocket updates (one update per keystroke, made with pycrdt before the clock
starts); every reader counts the updates it receives. Cases:

- ``yjs``: ``/v1/yjs/{doc}`` of ``syncline serve`` (every update appended to the
  SQLite log before it is relayed) with each WebSocket implementation: our own
  ``lean`` (the default of ``syncline serve``), uvicorn's ``websockets`` and
  ``websockets-sansio``; the headline figures come from the fastest;
- ``native``: the same updates as room messages (``say`` → ``msg``) on ``/v1/ws``
  (msgpack); room messages are ephemeral, not appended to the log;
- ``anchor``: pycrdt-websocket's ``ASGIServer`` + ``WebsocketServer`` under uvicorn,
  default in-memory rooms (no store).

Flat out: the writer keeps at most ``WINDOW`` updates ahead of the slowest reader (so
queues stay bounded and nobody is closed for being slow); throughput is room updates
per second, first send to the last reader's last receive. Paced: 100 updates/s with
50 readers; latency is receive time minus send time (one monotonic clock: every
client runs in this process). Servers run in their own processes.

    python benchmarks/fanout.py [--quick] [--trace PATH] [--reps N]

Last line: JSON with ``yjs_n10_updates_per_s``, ``anchor_n10_updates_per_s``,
``ratio_vs_anchor_n10``, ``paced_n50_p99_ms``, ``anchor_paced_n50_p99_ms``.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_TRACE = ROOT.parent / "shared/data/traces/automerge-paper.json.gz"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
WINDOW = 256
STALL_S = 30.0  # no reader progress for this long: the case ends, reported INCOMPLETE
OUT = ROOT / "benchmarks/out"


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
    """A server in its own process; ``kind`` is ``syncline`` or ``anchor``."""

    def __init__(self, kind: str, ws: str = "auto", tmp: Path | None = None, env: dict | None = None) -> None:
        self.kind, self.ws = kind, ws
        self.port = free_port()
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="fanout-"))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        return "anchor" if self.kind == "anchor" else f"syncline/{self.ws}"

    def url(self, path: str) -> str:
        if self.kind == "anchor":
            return f"ws://127.0.0.1:{self.port}/{path.rsplit('/', 1)[-1]}"
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> "Server":
        env = dict(os.environ, PYTHONPATH=str(ROOT), SYNCLINE_JWT_SECRET=SECRET,
                   SYNCLINE_RATE_LIMIT_MESSAGES="100000000", SYNCLINE_LOG_FORMAT="json",
                   SYNCLINE_PRUNE_INTERVAL_S="0", **self.env)
        if self.kind == "anchor":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-anchor", str(self.port)]
        else:
            db = f"sqlite+aiosqlite:///{self.tmp}/syncline-{self.port}.db"
            cmd = [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port), "--db", db, "--ws", self.ws]
        self.log = open(self.tmp / f"{self.kind}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile)
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
        """User + system CPU seconds of the server process so far (/proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
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


# -- the load ------------------------------------------------------------------


def keystroke_updates(path: Path, n: int) -> list[bytes]:
    """One Yjs update per keystroke (patch) of the trace, in order."""
    import pycrdt

    trace = json.loads(gzip.open(path).read())
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    for txn in trace["txns"]:
        for pos, delete, insert in txn["patches"]:
            with doc.transaction():
                if delete:
                    del text[pos:pos + delete]
                if insert:
                    text.insert(pos, insert)
            if len(updates) >= n:
                return updates
    return updates


def yjs_frames(updates: list[bytes]) -> list[bytes]:
    from engine.yprotocol import encode_sync_update

    return [encode_sync_update(u) for u in updates]


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
        except Exception:
            pass

    async def drain_writer() -> None:  # the anchor echoes updates to their writer
        try:
            async for _ in writer:
                pass
        except Exception:
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
                except asyncio.TimeoutError:
                    stalled = True
            if stalled:
                break
        sent_at[k] = clock()
        await writer.send(frame)
    complete = not stalled
    try:
        if stalled:
            raise asyncio.TimeoutError
        await asyncio.wait_for(done.wait(), 60 + n / 200)
    except asyncio.TimeoutError:
        complete = False
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


# -- main ----------------------------------------------------------------------


def median_result(rs: list[Result]) -> Result:
    rs = sorted(rs, key=lambda r: r.updates_per_s)
    return rs[len(rs) // 2]


async def bench(args) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=160)
    raise_nofile()
    n_updates = 2_000 if args.quick else 20_000
    n_paced = 500 if args.quick else 3_000
    reps = args.reps or (1 if args.quick else 3)
    readers_list = [1, 10, 50]
    t = time.perf_counter()
    updates = keystroke_updates(Path(args.trace), n_updates)
    console.print(f"{len(updates)} keystroke updates from {Path(args.trace).name} in {time.perf_counter() - t:.2f} s "
                  f"(mean {statistics.mean(map(len, updates)):.0f} bytes); load avg {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    servers = [Server("syncline", "lean", tmp), Server("syncline", "websockets", tmp),
               Server("syncline", "websockets-sansio", tmp), Server("anchor", tmp=tmp)]
    if args.only:
        servers = [s for s in servers if s.label in args.only.split(",")]
    results: list[Result] = []
    paced: list[Result] = []
    case = 0
    try:
        for s in servers:
            s.start()
            protocols = ["yjs"] if s.kind == "anchor" else ["yjs", "native"]
            for proto in protocols:
                frames_of = yjs_frames if proto == "yjs" else native_frames
                for readers in readers_list:
                    reps_here = []
                    for _ in range(reps if readers < 50 else 1):  # n=50 once: it is the long one
                        case += 1
                        r = await run_case(s, proto, frames_of, updates, readers, None, f"{os.getpid()}-{case}")
                        if not r.complete:  # seen with the anchor: one reader of a fresh room never served
                            console.print(f"  {s.label:28} {proto:6} n={readers:<3} INCOMPLETE (min {r.min_count}); "
                                          "one retry in a fresh room")
                            case += 1
                            r = await run_case(s, proto, frames_of, updates, readers, None, f"{os.getpid()}-{case}")
                        reps_here.append(r)
                        console.print(f"  {s.label:28} {proto:6} n={readers:<3} {r.updates_per_s:8.0f} upd/s  "
                                      f"p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms  server cpu "
                                      f"{r.server_cpu / r.seconds:4.0%} ({r.server_cpu_us:4.0f} us/upd)  client cpu {r.client_cpu / r.seconds:4.0%}"
                                      f"{'' if r.complete else f'  INCOMPLETE (min {r.min_count})'}")
                    results.append(median_result(reps_here))
                case += 1
                r = await run_case(s, proto, frames_of, updates[:n_paced], 50, 100.0, f"{os.getpid()}-{case}")
                console.print(f"  {s.label:28} {proto:6} paced 100/s n=50: p50 {r.pct(50):.2f} ms  "
                              f"p99 {r.pct(99):.2f} ms  server cpu {r.server_cpu / r.seconds:4.0%} ({r.server_cpu_us:.0f} us/upd)")
                paced.append(r)
            s.stop()
    finally:
        for s in servers:
            s.stop()

    table = Table(title=f"Fan-out, {n_updates} keystroke updates (flat out, window {WINDOW}); median of {reps}")
    for col in ("server", "protocol", "readers", "room updates/s", "deliveries/s", "p50 ms", "p99 ms",
                "server CPU", "server us/upd", "client CPU"):
        table.add_column(col, justify="right" if col not in ("server", "protocol") else "left")
    for r in results + paced:
        label = f"{r.readers}" + (" paced 100/s" if r in paced else "")
        table.add_row(r.server, r.protocol, label, f"{r.updates_per_s:,.0f}", f"{r.updates_per_s * r.readers:,.0f}",
                      f"{r.pct(50):.2f}", f"{r.pct(99):.2f}", f"{r.server_cpu / r.seconds:.0%}", f"{r.server_cpu_us:.0f}",
                      f"{r.client_cpu / r.seconds:.0%}")
    console.print(table)

    def pick(server: str, proto: str, readers: int, from_=results) -> Result:
        return next(r for r in from_ if r.server == server and r.protocol == proto and r.readers == readers)

    lean = pick("syncline/lean", "yjs", 10)
    default = pick("syncline/websockets", "yjs", 10)
    sansio = pick("syncline/websockets-sansio", "yjs", 10)
    best = max((lean, default, sansio), key=lambda r: r.updates_per_s)
    anchor = pick("anchor", "yjs", 10)
    paced_best = pick(best.server, "yjs", 50, paced)
    plot(results, paced, OUT / "fanout.png")
    summary = {
        "yjs_n10_updates_per_s": round(best.updates_per_s),
        "anchor_n10_updates_per_s": round(anchor.updates_per_s),
        "ratio_vs_anchor_n10": round(best.updates_per_s / anchor.updates_per_s, 2),
        "paced_n50_p99_ms": round(paced_best.pct(99), 2),
        "anchor_paced_n50_p99_ms": round(pick("anchor", "yjs", 50, paced).pct(99), 2),
        "ws_impl": best.server.split("/", 1)[1],
        "yjs_n10_updates_per_s_lean": round(lean.updates_per_s),
        "yjs_n10_updates_per_s_websockets": round(default.updates_per_s),
        "yjs_n10_updates_per_s_sansio": round(sansio.updates_per_s),
        "native_n10_updates_per_s": round(pick(best.server, "native", 10).updates_per_s),
        "yjs_n10_server_cpu_us_per_update": round(best.server_cpu_us, 1),
        "anchor_n10_server_cpu_us_per_update": round(anchor.server_cpu_us, 1),
        "incomplete_cases": [f"{r.server}/{r.protocol}/n{r.readers}" for r in results + paced if not r.complete],
        "updates": n_updates,
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
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    p.add_argument("--reps", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated server labels to run (debugging)")
    p.add_argument("--serve-anchor", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_anchor:
        serve_anchor(args.serve_anchor)
        return
    summary = asyncio.run(bench(args))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
