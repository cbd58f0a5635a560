"""Benchmark: the event bus end to end, publish -> handler, against Redis Streams.

    python benchmarks/bus.py [--quick] [--runs N] [--pg-url URL] [--redis-url URL]

Flows, each in one process (publisher and consumers share one event loop):
  * broadcast subscriber on SQLite and PostgreSQL;
  * a consumer group of 4 members (16 partitions) on SQLite and PostgreSQL; the members
    share the process's one log reader (bus/reader.py);
  * the anchor: Redis Streams, XADD (pipelined) + XREADGROUP with 4 consumers + XACK.
Throughput: publish N events as fast as possible (batches of 100, 50 streams) and time
until the last is handled. Latency: each event carries its publish time; p50/p99 of
handler time minus publish time, at full speed and paced at 5,000 events/s. With
``--runs N`` every flow runs N times (interleaved) and the medians are reported: on a
shared 2-core machine single runs vary by 2x.

Without URLs (and without SYNCLINE_TEST_PG_URL / SYNCLINE_TEST_REDIS_URL), a private
PostgreSQL and Redis are started on free ports and removed afterwards.
Last line: one JSON object (pg_group4_eps, pg_group4_p99_ms_at_5k, sqlite_broadcast_eps,
redis_streams_eps, ratio_vs_redis_streams, ...).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.bus import Bus, RetryPolicy  # noqa: E402
from syncline.engine.events import NewEvent, StreamWrite  # noqa: E402
from syncline.store import open_store  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
console = Console(stderr=True)
STREAMS = 50
BATCH = 100


# ----------------------------------------------------------------- services

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout}s")
        time.sleep(0.1)


def start_postgres(stack: ExitStack) -> str:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    pg_bin = next((b for b in bins if (b / "initdb").exists()), None)
    if pg_bin is None:
        raise RuntimeError("no PostgreSQL binaries; pass --pg-url or run scripts/services.sh start")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    d = Path(tempfile.mkdtemp(prefix="syncline-bench-pg-"))
    d.chmod(0o777)
    data = d / "data"
    port = _free_port()
    if run_as:
        shutil.chown(d, "postgres")
    subprocess.run([*run_as, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True)
    with open(data / "postgresql.conf", "a") as f:
        f.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 100\n")
    subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(d / "log"), "-w", "start"],
                   check=True, capture_output=True)

    def stop():
        subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(d, ignore_errors=True)

    stack.callback(stop)
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"


def start_redis(stack: ExitStack) -> str:
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("no redis-server; pass --redis-url or run scripts/services.sh start")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True
        except OSError:
            return False

    _wait(up, 10, "redis")
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    return f"redis://127.0.0.1:{port}/0"


async def fresh_pg_database(url: str, name: str) -> str:
    import asyncpg

    base = url.replace("postgresql+asyncpg", "postgresql")
    admin = await asyncpg.connect(base.rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return url.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(url: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


# -------------------------------------------------------------------- flows

class Probe:
    """Collects publish->handler latencies and the time the last event arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def seen(self, t_pub: float) -> None:
        self.latencies.append(time.perf_counter() - t_pub)
        if len(self.latencies) >= self.expected:
            self.done.set()


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def publish_log(store, tenant: str, n: int, rate: float | None, offset: int = 0) -> None:
    """Append n events in batches of BATCH over STREAMS streams; ``rate`` events/s or flat out."""
    start = time.perf_counter()
    for b in range(0, n, BATCH):
        if rate:
            due = start + b / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t = time.perf_counter()
        writes: dict[str, list] = {}
        for i in range(b, min(b + BATCH, n)):
            writes.setdefault(f"order/{(i + offset) % STREAMS}", []).append(NewEvent("order.placed", {"i": i, "t": t}))
        await store.append_many(tenant, [StreamWrite(s, tuple(e)) for s, e in writes.items()])


async def run_store_flow(url: str, kind: str, n: int, rate: float | None, members: int = 4) -> dict:
    store = await open_store(url, poll_interval_s=0.5)
    bus = Bus(store)
    probe = Probe(n)

    async def handler(d):
        probe.seen(d.event.data["t"])

    group = f"bench-{kind}"
    tenant = f"bench-{kind}-{int(rate or 0)}"  # each flow reads only its own events
    if kind == "broadcast":
        subs = [await bus.subscribe(handler, tenant=tenant, batch=1000).start()]
    else:
        policy = RetryPolicy(ack_timeout_s=None)
        subs = [bus.group(group, handler, tenant=tenant, partitions=16, member_id=f"m{i}", lease_s=10,
                          policy=policy, batch=1000, commit_interval_s=0.1) for i in range(members)]
        for s in subs:
            await s.start()
        # let the group settle into an even split before timing (members joined one by one)
        for s in subs:
            await s._rebalance()
        for s in subs:
            await s._rebalance()
    t0 = time.perf_counter()
    await publish_log(store, tenant, n, rate)
    await asyncio.wait_for(probe.done.wait(), 120)
    elapsed = time.perf_counter() - t0
    for s in subs:
        await s.stop()
    await store.close()
    return {"eps": n / elapsed, "p50_ms": percentile(probe.latencies, 0.5), "p99_ms": percentile(probe.latencies, 0.99)}


async def run_redis_flow(url: str, n: int, rate: float | None, consumers: int = 4) -> dict:
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    key = f"bench:{time.time_ns()}"
    await r.xgroup_create(key, "g", id="0", mkstream=True)
    probe = Probe(n)

    async def consume(name: str) -> None:
        c = aioredis.from_url(url)
        try:
            while not probe.done.is_set():
                resp = await c.xreadgroup("g", name, {key: ">"}, count=1000, block=100)
                for _, entries in resp or ():
                    ids = []
                    for eid, fields in entries:
                        probe.seen(float(fields[b"t"]))
                        ids.append(eid)
                    if ids:
                        await c.xack(key, "g", *ids)
        finally:
            await c.aclose()

    tasks = [asyncio.create_task(consume(f"c{i}")) for i in range(consumers)]
    t0 = time.perf_counter()
    start = t0
    for b in range(0, n, BATCH):
        if rate:
            delay = start + b / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t = time.perf_counter()
        pipe = r.pipeline(transaction=False)
        for i in range(b, min(b + BATCH, n)):
            pipe.xadd(key, {"stream": f"order/{i % STREAMS}", "type": "order.placed", "i": i, "t": t})
        await pipe.execute()
    await asyncio.wait_for(probe.done.wait(), 120)
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    await r.delete(key)
    await r.aclose()
    return {"eps": n / elapsed, "p50_ms": percentile(probe.latencies, 0.5), "p99_ms": percentile(probe.latencies, 0.99)}


# --------------------------------------------------------------------- main

def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def bench(pg_url: str, redis_url: str, quick: bool, runs: int = 1) -> dict:
    n = 5_000 if quick else 30_000
    paced_n = 5_000 if quick else 15_000
    results: dict[tuple[str, str], list[dict]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="syncline-bench-bus-"))
    db_name = f"bus_bench_{os.getpid()}"
    pg = await fresh_pg_database(pg_url, db_name)
    try:
        for _ in range(runs):
            for backend, url in (("sqlite", f"sqlite+aiosqlite:///{tmp}/bus.db"), ("postgres", pg)):
                for kind in ("broadcast", "group4"):
                    r = await run_store_flow(url, kind, n, None)
                    results.setdefault((backend, kind), []).append(r)
                    console.log(f"{backend} {kind} flat out: {r['eps']:.0f} ev/s p99 {r['p99_ms']:.1f} ms")
                    r = await run_store_flow(url, kind, paced_n, 5000)
                    results.setdefault((backend, f"{kind} @5k/s"), []).append(r)
                    console.log(f"{backend} {kind} @5k/s: {r['eps']:.0f} ev/s p99 {r['p99_ms']:.1f} ms")
            results.setdefault(("redis streams", "group4"), []).append(await run_redis_flow(redis_url, n, None))
            results.setdefault(("redis streams", "group4 @5k/s"), []).append(
                await run_redis_flow(redis_url, paced_n, 5000))
    finally:
        await drop_pg_database(pg_url, db_name)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [(b, k, _median(rs)) for (b, k), rs in results.items()]
    return {"rows": rows, "n": n, "paced_n": paced_n, "runs": runs}


def report(result: dict) -> dict:
    rows = result["rows"]
    get = {(b, k): r for b, k, r in rows}
    table = Table("backend", "flow", "events/s", "p50 ms", "p99 ms",
                  title=f"event bus: publish -> handler ({result['n']} events flat out, {result['paced_n']} paced; "
                        f"median of {result['runs']} runs; {os.cpu_count()} cores)")
    for b, k, r in rows:
        table.add_row(b, k, f"{r['eps']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    Console().print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        flat = [(f"{b}\n{k}", r["eps"]) for b, k, r in rows if "@" not in k]
        paced = [(f"{b}\n{k.split()[0]}", r["p99_ms"]) for b, k, r in rows if "@" in k]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
        a1.bar([x for x, _ in flat], [y for _, y in flat], color="#4477aa")
        a1.set_title("throughput, flat out (events/s)")
        a1.tick_params(axis="x", labelsize=7)
        a2.bar([x for x, _ in paced], [y for _, y in paced], color="#cc6677")
        a2.axhline(50, color="k", ls="--", lw=0.8)
        a2.set_title("p99 publish->handler at 5,000 events/s (ms)")
        a2.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        OUT.mkdir(parents=True, exist_ok=True)
        fig.savefig(OUT / "bus.png", dpi=110)
    except Exception as e:  # the plot is a convenience; the numbers are the result
        console.log(f"plot failed: {e}")
    redis_eps = get[("redis streams", "group4")]["eps"]
    pg_group = get[("postgres", "group4")]["eps"]
    return {
        "pg_group4_eps": round(pg_group),
        "pg_group4_p99_ms_at_5k": round(get[("postgres", "group4 @5k/s")]["p99_ms"], 1),
        "sqlite_broadcast_eps": round(get[("sqlite", "broadcast")]["eps"]),
        "redis_streams_eps": round(redis_eps),
        "ratio_vs_redis_streams": round(pg_group / redis_eps, 3),
        "pg_broadcast_eps": round(get[("postgres", "broadcast")]["eps"]),
        "sqlite_group4_eps": round(get[("sqlite", "group4")]["eps"]),
        "redis_streams_p99_ms_at_5k": round(get[("redis streams", "group4 @5k/s")]["p99_ms"], 1),
        "cores": os.cpu_count(),
        "runs": result["runs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=1, help="run every flow N times and report the medians")
    ap.add_argument("--pg-url", default=os.environ.get("SYNCLINE_BENCH_PG_URL")
                    or os.environ.get("SYNCLINE_TEST_PG_URL"))
    ap.add_argument("--redis-url", default=os.environ.get("SYNCLINE_BENCH_REDIS_URL")
                    or os.environ.get("SYNCLINE_TEST_REDIS_URL"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with ExitStack() as stack:
        pg_url = args.pg_url or start_postgres(stack)
        redis_url = args.redis_url or start_redis(stack)
        result = asyncio.run(bench(pg_url, redis_url, args.quick, max(1, args.runs)))
    print(json.dumps(report(result)))


if __name__ == "__main__":
    main()
