"""Offline drain and catch-up, end to end against a real gateway process.

1. drain: a client with 10,000 ops queued offline (a SQLite queue file) reconnects;
   ops acknowledged per second, from connect to an empty queue;
2. catch-up: a fresh client subscribes from position 0 and applies 100,000 events
   (delta batches over the WebSocket, acked as applied); events per second.

    python benchmarks/offline_drain.py [--quick] [--pg-url postgresql+asyncpg://...]

SQLite always; PostgreSQL when --pg-url (or SYNCLINE_TEST_PG_URL) is given.
Last line: JSON with ``drain_ops_per_s`` and ``catchup_eps`` (SQLite numbers).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/clientkit"))
# ck_support imports the shared waiting helper (last: tests/store must not shadow store)
sys.path.append(str(ROOT / "tests"))

import httpx  # noqa: E402
from ck_support import ServerProcess, token  # noqa: E402  (the tests' server launcher)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.clientkit.client import SynclineClient  # noqa: E402
from syncline.clientkit.core import SessionCore  # noqa: E402
from syncline.clientkit.queue import SqliteOpQueue  # noqa: E402

console = Console(highlight=False)


async def drain(server: ServerProcess, ops: int, tmp: Path) -> dict:
    qpath = tmp / f"drain-{time.monotonic_ns()}.db"
    q = SqliteOpQueue(qpath, limit=max(10_000, ops))
    core = SessionCore(user="alice", queue=q, auto_reconnect=False)
    now = time.time_ns() // 1_000_000
    records = int(os.environ.get("DRAIN_RECORDS", 1000))
    for i in range(ops):
        core.set(f"rec/items/{i % records}", {"n": i, "title": f"item {i}"}, now)
    q.close()
    c = SynclineClient(server.url, token("alice"), user="alice", queue_path=qpath, batch_size=2000, max_inflight=4)
    t0 = time.perf_counter()
    await c.start()
    await c.wait_until(lambda: c.pending == 0, 300)
    dt = time.perf_counter() - t0
    await c.close()
    return {"ops": ops, "seconds": dt, "ops_per_s": ops / dt}


async def fill(server: ServerProcess, events: int) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token('loader')}"}) as http:
        sem = asyncio.Semaphore(4)

        async def one(k: int) -> None:
            async with sem:
                body = {"events": [{"type": "feed.posted", "data": {"k": k, "i": i, "text": "x" * 40}}
                                   for i in range(1000)]}
                r = await http.post(f"/v1/streams/feed/{k % 50}", json=body)
                r.raise_for_status()

        await asyncio.gather(*(one(k) for k in range(events // 1000)))


async def catchup(server: ServerProcess, events: int) -> dict:
    c = SynclineClient(server.url, token("bob"), user="bob", prefixes=("feed/",))
    progress = []
    c.on("on_progress", lambda pos, head: progress.append(pos))
    t0 = time.perf_counter()
    await c.start()
    head = httpx.get(f"{server.url}/v1/log", params={"limit": 1},
                     headers={"Authorization": f"Bearer {token('bob')}"}).json()["head"]
    await c.wait_until(lambda: c.core.position >= head, 600)
    dt = time.perf_counter() - t0
    applied = c.stats["events"]
    await c.close()
    return {"events": applied, "seconds": dt, "eps": applied / dt, "batches": len(progress)}


async def run_backend(name: str, db_url: str | None, tmp: Path, ops: int, events: int) -> dict:
    env = {"SYNCLINE_EVENT_BATCH_MAX": "2000", "SYNCLINE_MAX_BEHIND": str(events * 2)}
    if db_url is None:
        server = ServerProcess(tmp / f"{name}.db", env=env)
    else:
        server = ServerProcess(tmp / "unused.db", env=env)
        server.db = db_url
    server.start()
    try:
        d = await drain(server, ops, tmp)
        console.log(f"{name}: drained {ops:,} ops in {d['seconds']:.2f} s = {d['ops_per_s']:,.0f} ops/s")
        await fill(server, events)
        cu = await catchup(server, events)
        console.log(f"{name}: caught up {cu['events']:,} events in {cu['seconds']:.2f} s = {cu['eps']:,.0f} ev/s "
                    f"({cu['batches']} batches)")
    finally:
        server.stop()
    return {"backend": name, "drain": d, "catchup": cu}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["backend"] for r in results]
    axes[0].bar(names, [r["drain"]["ops_per_s"] for r in results], color="#4c72b0")
    axes[0].axhline(5000, color="red", linestyle="--", label="target 5,000")
    axes[0].set_title("offline drain: ops acked/s")
    axes[0].legend()
    axes[1].bar(names, [r["catchup"]["eps"] for r in results], color="#55a868")
    axes[1].axhline(50_000, color="red", linestyle="--", label="target 50,000")
    axes[1].set_title("catch-up by delta: events/s")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 ops and 20,000 events")
    ap.add_argument("--pg-url", default=os.environ.get("SYNCLINE_TEST_PG_URL"))
    args = ap.parse_args()
    ops, events = (2_000, 20_000) if args.quick else (10_000, 100_000)
    console.log(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores; "
                f"{ops:,} queued ops, {events:,} events")
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results.append(await run_backend("sqlite", None, tmp, ops, events))
        if args.pg_url:
            try:
                results.append(await run_backend("postgres", args.pg_url, tmp, ops, events))
            except Exception as e:  # noqa: BLE001 - report and keep the SQLite numbers
                console.log(f"postgres skipped: {type(e).__name__}: {e}")
    table = Table(title="Client kit: offline drain and catch-up (end to end, real gateway process)")
    for col in ("backend", "queued ops", "drain s", "ops acked/s", "events", "catch-up s", "events/s"):
        table.add_column(col, justify="right")
    for r in results:
        d, c = r["drain"], r["catchup"]
        table.add_row(r["backend"], f"{d['ops']:,}", f"{d['seconds']:.2f}", f"{d['ops_per_s']:,.0f}",
                      f"{c['events']:,}", f"{c['seconds']:.2f}", f"{c['eps']:,.0f}")
    console.print(table)
    png = ROOT / "benchmarks/out/offline_drain.png"
    plot(results, png)
    console.log(f"plot: {png}")
    sq = results[0]
    backends = {
        r["backend"]: {"drain_ops_per_s": round(r["drain"]["ops_per_s"]), "catchup_eps": round(r["catchup"]["eps"])}
        for r in results
    }
    print(json.dumps({"drain_ops_per_s": round(sq["drain"]["ops_per_s"]), "catchup_eps": round(sq["catchup"]["eps"]),
                      "quick": args.quick, "backends": backends}))


if __name__ == "__main__":
    asyncio.run(main())
