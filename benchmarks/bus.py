"""Benchmark: a consumer group of 4 on PostgreSQL, members in separate processes, against
Redis Streams with 4 consumer processes, in the same run.

    python benchmarks/bus.py [--quick] [--runs N] [--events N] [--pg-url URL] [--redis-url URL]

What is measured:

* **throughput (``pg_group4_eps``)**: a log of N events (batches of 100 over 50 streams,
  one tenant) is published first; then 4 member processes (multiprocessing, spawn) join
  a 16-partition group with a batched handler (bus/delivery.py ``Batch``) that counts
  events and acks them (auto_ack). The members join and settle into 4 partitions each
  while their reads are held back; then all are released at once and the clock runs
  from the release until the last of the N events is handled (its handler's wall time,
  sent back through shared memory). Checkpoints, in-flight marks and heartbeats all run
  as in production; the group's checkpoints are at the head at the end.
* **the anchor (``redis_streams_eps``)**: the same N entries XADDed (pipelined) first, then
  4 consumer processes released at once, each ``XREADGROUP COUNT 1000`` + ``XACK`` of
  what it read, until the stream is drained; ``pg_group4_ratio_vs_redis_streams`` is
  the first figure over this one. The consumers are redis-py; with hiredis installed (the
  ``bench`` extra) they parse replies in C, as real consumers do, and drain about 3.5×
  faster than with redis-py's pure-Python parser (``redis_hiredis`` in the JSON says which).
* **latency (``pg_group4_p99_ms_at_20k``)**: with the members settled on an empty tenant,
  events are published live at 20,000 events/s (batches of 100); the handler records
  ``now - commit time`` for every event, where the commit time is the event's ``time_us``,
  stamped by the store inside the appending transaction (just before its INSERT and
  COMMIT, so this slightly overstates the time from visibility to handler); p50/p99 over
  every event. This is delivery latency: how long after an event exists the group has it.
  ``pg_group4_publish_p99_ms_at_20k`` is from the publish call instead (each event carries
  its publish wall time ``t``): it adds the appender's group-commit wait and the fsync, which
  ``pg_append_p99_ms_at_20k`` shows alone. Redis Streams the same two ways: from the entry
  id's millisecond timestamp (the server's clock at XADD; ``redis_streams_p99_ms_at_20k``)
  and from before the pipelined XADD (``redis_streams_publish_p99_ms_at_20k``). Before
  2026-12-08 02:00 the headline figure was the publish-based one.
* **``network_group4_eps``**: the group's members consuming over the network API, from
  benchmarks/_bus_network.py's ``network_group_eps(pg_url, events, members=4)`` when that
  file exists (null otherwise; its docstring says what it measures).

Members hold 10 s leases (the default) and heartbeat every 0.5 s (so the group settles
quickly); with 1.5 s leases, as before, a member whose heartbeat ran late on the loaded
machine paused its workers and lost partitions mid-drain. ``pg_member_cpu_us_per_event``
is the members' CPU time (user + system) during the drain over the events: a figure the
machine's other load disturbs less than the rate. Each member process (and the publishing
parent) tunes the garbage collector after startup as ``syncline serve`` does (cli/commands/serve.py ``tune_gc``:
freeze the startup heap, collect the young generation less often); without it, one
full collection per member walked SQLAlchemy's and the app's startup objects for
100–170 ms mid-run, which was the paced run's p99 (a long-running member process
should do the same).

With ``--runs N`` every flow runs N times (interleaved) and the medians are reported: on a
shared 2-core machine single runs vary by 2x. Without URLs (and without
SYNCLINE_TEST_PG_URL / SYNCLINE_TEST_REDIS_URL), a private PostgreSQL and Redis are
started on free ports and removed afterwards. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import multiprocessing as mp
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

OUT = Path(__file__).resolve().parent / "out"
console = Console(stderr=True)
STREAMS = 50
BATCH = 100
MEMBERS = 4
PARTITIONS = 16
PACED_RATE = 20_000


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


# ------------------------------------------------------------- shared state

class Shared:
    """What the parent and its member/consumer processes share: per child, events handled,
    the wall time of the last one, partitions owned; a release and a stop flag; a queue
    for latencies (sent once, at the end)."""

    def __init__(self, ctx, n: int) -> None:
        self.counts = ctx.Array("q", n, lock=False)
        self.last = ctx.Array("d", n, lock=False)
        self.owned = ctx.Array("i", [-1] * n, lock=False)
        self.read = ctx.Array("q", n, lock=False)  # events each member's reader read (diagnostics)
        self.cpu = ctx.Array("d", n, lock=False)  # CPU seconds each child used since the release
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.latencies = ctx.Queue()

    def total(self) -> int:
        return sum(self.counts)


def _wait_until(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"a child process died ({p.exitcode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(0.01)


def _percentiles(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    s = sorted(xs)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(0.99 * len(s)))] * 1000


# --------------------------------------------------------- PostgreSQL group

def _member_main(i: int, url: str, tenant: str, group: str, sh: Shared, latency: bool) -> None:
    logging.basicConfig(level=logging.ERROR)
    if os.environ.get("BUS_BENCH_PROFILE") and i == 0 and not latency:
        import cProfile

        prof = cProfile.Profile(time.process_time)
        prof.runctx("asyncio.run(_member(i, url, tenant, group, sh, latency))", globals(), locals())
        prof.dump_stats(os.environ["BUS_BENCH_PROFILE"])
        return
    asyncio.run(_member(i, url, tenant, group, sh, latency))


async def _member(i: int, url: str, tenant: str, group: str, sh: Shared, latency: bool) -> None:
    from syncline.bus import Bus, RetryPolicy
    from syncline.cli.commands.serve import tune_gc
    from syncline.store import open_store

    store = await open_store(url, poll_interval_s=0.2)
    released = asyncio.Event()
    # Hold the member's log reads until the parent releases every member at once (the
    # group settles first: otherwise the first member to join drains alone for a while).
    for name in ("read_log", "read_log_partitions"):
        orig = getattr(store, name, None)
        if orig is not None:
            def held(*a, _orig=orig, **k):
                async def go():
                    await released.wait()
                    return await _orig(*a, **k)
                return go()
            setattr(store, name, held)
    lat: list[tuple[float, float]] = []  # (from commit, from publish) per event
    n = 0
    cpu0 = 0.0

    async def handler(batch) -> None:
        nonlocal n
        now = time.time()
        if latency:
            lat.extend((now - d.event.time_us / 1e6, now - d.event.data["t"]) for d in batch.deliveries)
        n += len(batch.deliveries)
        sh.cpu[i] = time.process_time() - cpu0
        sh.counts[i] = n
        sh.last[i] = now

    m = Bus(store).group(group, handler, tenant=tenant, partitions=PARTITIONS, member_id=f"m{i}", heartbeat_s=0.5,
                         batched=True, policy=RetryPolicy(ack_timeout_s=None), batch=1000, commit_interval_s=0.1)
    await m.start()
    tune_gc()  # as `syncline serve` does: a long-running service process
    while not sh.go.is_set():
        sh.owned[i] = len(m.owned)
        await asyncio.sleep(0.02)
    cpu0 = time.process_time()
    released.set()
    while not sh.stop.is_set():
        sh.owned[i] = len(m.owned)
        if m._reader is not None:
            sh.read[i] = m._reader.events_read
        await asyncio.sleep(0.02)
    await m.stop()
    await store.close()
    sh.latencies.put(lat)


def _settled(sh: Shared, members: int) -> bool:
    return all(sh.owned[i] == PARTITIONS // members for i in range(members))


async def publish(store, tenant: str, n: int, rate: float | None, per_call: int = BATCH,
                  commit_times: list[float] | None = None) -> None:
    """Append n events over STREAMS streams, ``per_call`` per append; ``rate`` events/s or flat out.
    Each event carries its publish wall time ``t`` (taken before the append: the latency
    includes the commit the publisher waits for); ``commit_times`` collects how long each
    append took."""
    from syncline.engine.events import NewEvent, StreamWrite

    start = time.perf_counter()
    for b in range(0, n, per_call):
        if rate:
            delay = start + b / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t = time.time()
        writes: dict[str, list] = {}
        for i in range(b, min(b + per_call, n)):
            writes.setdefault(f"order/{i % STREAMS}", []).append(NewEvent("order.placed", {"i": i, "t": t}))
        await store.append_many(tenant, [StreamWrite(s, tuple(e)) for s, e in writes.items()])
        if commit_times is not None:
            commit_times.append(time.time() - t)


def _spawn(ctx, target, args_for, members: int) -> list:
    procs = [ctx.Process(target=target, args=args_for(i), daemon=True) for i in range(members)]
    for p in procs:
        p.start()
    return procs


def _finish(sh: Shared, procs: list) -> list[float]:
    sh.stop.set()
    lat: list[float] = []
    for _ in procs:
        lat.extend(sh.latencies.get(timeout=60))
    for p in procs:
        p.join(30)
    return lat


async def pg_drain(url: str, n: int, tag: str, members: int = MEMBERS) -> dict:
    """Pre-publish n events, settle the group, release the members, time the drain."""
    from syncline.store import open_store

    tenant = f"drain-{tag}"
    store = await open_store(url)
    await publish(store, tenant, n, None, per_call=1000)
    await store.close()
    ctx = mp.get_context("spawn")
    sh = Shared(ctx, members)
    procs = _spawn(ctx, _member_main, lambda i: (i, url, tenant, f"g-{tag}", sh, False), members)
    try:
        _wait_until(lambda: _settled(sh, members), 60, "the group to settle", procs)
        t0 = time.time()
        sh.go.set()
        _wait_until(lambda: sh.total() >= n, 300, f"{n} events to be handled", procs)
        elapsed = max(sh.last) - t0
        time.sleep(0.05)
        console.log(f"  members handled {list(sh.counts)}, their readers read {list(sh.read)} events, "
                    f"CPU {sum(sh.cpu):.2f} s")
        cpu = sum(sh.cpu)
    finally:
        _finish(sh, procs)
    return {"eps": n / elapsed, "cpu_us_per_event": cpu / n * 1e6}


async def pg_paced(url: str, n: int, rate: float, tag: str, members: int = MEMBERS) -> dict:
    from syncline.store import open_store

    tenant = f"paced-{tag}"
    ctx = mp.get_context("spawn")
    sh = Shared(ctx, members)
    procs = _spawn(ctx, _member_main, lambda i: (i, url, tenant, f"p-{tag}", sh, True), members)
    store = await open_store(url)
    try:
        _wait_until(lambda: _settled(sh, members), 60, "the group to settle", procs)
        sh.go.set()
        commits: list[float] = []
        await publish(store, tenant, n, rate, commit_times=commits)
        _wait_until(lambda: sh.total() >= n, 120, f"{n} paced events to be handled", procs)
    finally:
        lat = _finish(sh, procs)
        await store.close()
    p50, p99 = _percentiles([c for c, _ in lat])
    pp50, pp99 = _percentiles([p for _, p in lat])
    c50, c99 = _percentiles(commits)
    return {"eps": rate, "p50_ms": p50, "p99_ms": p99, "publish_p50_ms": pp50, "publish_p99_ms": pp99,
            "commit_p50_ms": c50, "commit_p99_ms": c99}


# ------------------------------------------------------------ Redis Streams

def _redis_consumer(i: int, url: str, key: str, sh: Shared, latency: bool) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.ping()
    sh.owned[i] = 0  # ready
    sh.go.wait()
    n = 0
    lat: list[float] = []
    while not sh.stop.is_set():
        resp = r.xreadgroup("g", f"c{i}", {key: ">"}, count=1000, block=50)
        for _, entries in resp or ():
            if not entries:
                continue
            now = time.time()
            if latency:  # (from the entry id's server time, from before the XADD)
                lat.extend((now - int(eid.split(b"-")[0]) / 1000, now - float(f[b"t"])) for eid, f in entries)
            r.xack(key, "g", *[eid for eid, _ in entries])
            n += len(entries)
            sh.counts[i] = n
            sh.last[i] = now
    r.close()
    sh.latencies.put(lat)


def _redis_fields(i: int, t: float) -> dict:
    return {"stream": f"order/{i % STREAMS}", "type": "order.placed", "i": i, "t": t}


def redis_drain(url: str, n: int, consumers: int = MEMBERS) -> dict:
    import redis

    r = redis.Redis.from_url(url)
    key = f"bench:{time.time_ns()}"
    r.xgroup_create(key, "g", id="0", mkstream=True)
    for b in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        t = time.time()
        for i in range(b, min(b + 1000, n)):
            pipe.xadd(key, _redis_fields(i, t))
        pipe.execute()
    ctx = mp.get_context("spawn")
    sh = Shared(ctx, consumers)
    procs = _spawn(ctx, _redis_consumer, lambda i: (i, url, key, sh, False), consumers)
    try:
        _wait_until(lambda: all(sh.owned[i] == 0 for i in range(consumers)), 60, "redis consumers", procs)
        t0 = time.time()
        sh.go.set()
        _wait_until(lambda: sh.total() >= n, 300, f"{n} entries to be acked", procs)
        elapsed = max(sh.last) - t0
    finally:
        _finish(sh, procs)
        r.delete(key)
        r.close()
    return {"eps": n / elapsed}


def redis_paced(url: str, n: int, rate: float, consumers: int = MEMBERS) -> dict:
    import redis

    r = redis.Redis.from_url(url)
    key = f"bench:{time.time_ns()}"
    r.xgroup_create(key, "g", id="0", mkstream=True)
    ctx = mp.get_context("spawn")
    sh = Shared(ctx, consumers)
    procs = _spawn(ctx, _redis_consumer, lambda i: (i, url, key, sh, True), consumers)
    try:
        _wait_until(lambda: all(sh.owned[i] == 0 for i in range(consumers)), 60, "redis consumers", procs)
        sh.go.set()
        start = time.perf_counter()
        for b in range(0, n, BATCH):
            delay = start + b / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = time.time()
            pipe = r.pipeline(transaction=False)
            for i in range(b, min(b + BATCH, n)):
                pipe.xadd(key, _redis_fields(i, t))
            pipe.execute()
        _wait_until(lambda: sh.total() >= n, 120, f"{n} paced entries", procs)
    finally:
        lat = _finish(sh, procs)
        r.delete(key)
        r.close()
    p50, p99 = _percentiles([c for c, _ in lat])
    pp50, pp99 = _percentiles([p for _, p in lat])
    return {"eps": rate, "p50_ms": p50, "p99_ms": p99, "publish_p50_ms": pp50, "publish_p99_ms": pp99}


# ------------------------------------------------------------------ network

NETWORK = Path(__file__).with_name("_bus_network.py")


async def network_eps(pg_url: str, n: int) -> float | None:
    """benchmarks/_bus_network.py's figure (the network consumer API), or None without it."""
    if not NETWORK.exists():
        console.log("benchmarks/_bus_network.py not found: network_group4_eps is null")
        return None
    spec = importlib.util.spec_from_file_location("_bus_network", NETWORK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return await mod.network_group_eps(pg_url, n, members=MEMBERS)


# --------------------------------------------------------------------- main

def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def bench(pg_url: str, redis_url: str, quick: bool, runs: int = 1, events: int | None = None) -> dict:
    n = events or (100_000 if quick else 500_000)
    paced_n = PACED_RATE * (2 if quick else 5)
    results: dict[str, list[dict]] = {}
    db_name = f"bus_bench_{os.getpid()}"
    pg = await fresh_pg_database(pg_url, db_name)
    try:
        from syncline.cli.commands.serve import tune_gc
        from syncline.store import open_store

        await (await open_store(pg)).close()  # migrates the fresh database once, before the children
        tune_gc()  # the publisher too is a long-running service (see the docstring)
        for run in range(runs):
            r = await pg_drain(pg, n, f"{run}")
            results.setdefault("pg_drain", []).append(r)
            console.log(f"postgres group4 drain: {r['eps']:,.0f} events/s, members' CPU "
                        f"{r['cpu_us_per_event']:.1f} us/event (load {os.getloadavg()[0]:.1f})")
            r = redis_drain(redis_url, n)
            results.setdefault("redis_drain", []).append(r)
            console.log(f"redis streams drain: {r['eps']:,.0f} events/s")
            r = await pg_paced(pg, paced_n, PACED_RATE, f"{run}")
            results.setdefault("pg_paced", []).append(r)
            console.log(f"postgres group4 @20k/s, from commit: p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; "
                        f"from publish: p50 {r['publish_p50_ms']:.1f} ms p99 {r['publish_p99_ms']:.1f} ms "
                        f"(the appends alone: p50 {r['commit_p50_ms']:.1f} ms p99 {r['commit_p99_ms']:.1f} ms)")
            r = redis_paced(redis_url, paced_n, PACED_RATE)
            results.setdefault("redis_paced", []).append(r)
            console.log(f"redis streams @20k/s, from XADD: p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; "
                        f"from publish: p50 {r['publish_p50_ms']:.1f} ms p99 {r['publish_p99_ms']:.1f} ms")
        net = await network_eps(pg, min(n, 50_000 if quick else 200_000))
    finally:
        await drop_pg_database(pg_url, db_name)
    return {"rows": {k: _median(v) for k, v in results.items()}, "n": n, "paced_n": paced_n, "runs": runs,
            "network": net}


def _hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def report(result: dict) -> dict:
    rows = result["rows"]
    table = Table("flow", "events/s", "p50 ms", "p99 ms", "p99 ms from publish",
                  title=f"event bus, group of {MEMBERS} in separate processes ({result['n']:,} events drained; "
                        f"{result['paced_n']:,} paced at {PACED_RATE:,}/s; median of {result['runs']} runs; "
                        f"{os.cpu_count()} cores)")
    for k, r in rows.items():
        table.add_row(k, f"{r['eps']:,.0f}", f"{r.get('p50_ms', float('nan')):.1f}",
                      f"{r.get('p99_ms', float('nan')):.1f}", f"{r.get('publish_p99_ms', float('nan')):.1f}")
    if result["network"] is not None:
        table.add_row("network group4 drain", f"{result['network']:,.0f}", "", "", "")
    Console().print(table)
    pg, redis_ = rows["pg_drain"]["eps"], rows["redis_drain"]["eps"]
    return {
        "pg_group4_eps": round(pg),
        "pg_group4_ratio_vs_redis_streams": round(pg / redis_, 3),
        "pg_group4_p99_ms_at_20k": round(rows["pg_paced"]["p99_ms"], 1),
        "network_group4_eps": None if result["network"] is None else round(result["network"]),
        "redis_streams_eps": round(redis_),
        "redis_streams_p99_ms_at_20k": round(rows["redis_paced"]["p99_ms"], 1),
        "pg_group4_p50_ms_at_20k": round(rows["pg_paced"]["p50_ms"], 1),
        "pg_group4_publish_p99_ms_at_20k": round(rows["pg_paced"]["publish_p99_ms"], 1),
        "redis_streams_publish_p99_ms_at_20k": round(rows["redis_paced"]["publish_p99_ms"], 1),
        "pg_member_cpu_us_per_event": round(rows["pg_drain"]["cpu_us_per_event"], 1),
        "pg_append_p99_ms_at_20k": round(rows["pg_paced"]["commit_p99_ms"], 1),
        "redis_hiredis": _hiredis(),
        "events": result["n"],
        "cores": os.cpu_count(),
        "runs": result["runs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=1, help="run every flow N times and report the medians")
    ap.add_argument("--events", type=int, default=None, help="events drained per run (default 100k quick, 500k)")
    ap.add_argument("--pg-url", default=os.environ.get("SYNCLINE_BENCH_PG_URL")
                    or os.environ.get("SYNCLINE_TEST_PG_URL"))
    ap.add_argument("--redis-url", default=os.environ.get("SYNCLINE_BENCH_REDIS_URL")
                    or os.environ.get("SYNCLINE_TEST_REDIS_URL"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with ExitStack() as stack:
        pg_url = args.pg_url or start_postgres(stack)
        redis_url = args.redis_url or start_redis(stack)
        result = asyncio.run(bench(pg_url, redis_url, args.quick, max(1, args.runs), args.events))
    print(json.dumps(report(result)))


if __name__ == "__main__":
    main()
