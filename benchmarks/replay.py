"""Benchmark: rebuilding projections from the log, against a bare read of the same events.

Builds a SQLite log with a realistic mix (record patches from real reconciliation,
Yjs keystroke updates, presence joins/leaves, domain events with actors), then:

- bare read: page through the whole log with ``read_log`` (decoded events), nothing else;
- rebuild: ``Projector.rebuild()`` with the built-in projections (records, documents,
  feeds, presence, stats) over the same log.

The ratio rebuild/read is what the projections cost. Target: rebuild >= 50% of the
bare read rate.

    python benchmarks/replay.py [--quick] [--events N] [--runs R]

Prints a table; the last line is one JSON object with ``rebuild_eps`` and
``rebuild_ratio_vs_read``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.engine.clocks import HLCTimestamp, VectorClock  # noqa: E402
from syncline.engine.events import Actor, NewEvent, StreamWrite  # noqa: E402
from syncline.engine.projections import builtin_projections  # noqa: E402
from syncline.engine.records import (  # noqa: E402
    LWW,
    ClientOp,
    CollectionPolicy,
    RecordsState,
    ResolutionConfig,
    as_stream_writes,
    merged,
    reconcile,
)
from syncline.store import open_store  # noqa: E402
from syncline.store.projector import Projector  # noqa: E402

TENANTS = ("acme", "globex", "initech")
CONFIG = ResolutionConfig({"tasks": CollectionPolicy(fields={"title": LWW, "points": merged("counter")})})


async def build_log(store, n_events: int, seed: int, progress: Progress) -> int:
    rng = random.Random(seed)
    docs = {t: pycrdt.Doc() for t in TENANTS}
    texts = {t: docs[t].get("text", type=pycrdt.Text) for t in TENANTS}
    states = {t: RecordsState() for t in TENANTS}
    ticks: dict[str, int] = {}
    written = 0
    task = progress.add_task("building the log", total=n_events)
    while written < n_events:
        tenant = rng.choice(TENANTS)
        kind = rng.random()
        if kind < 0.35:  # a batch of record ops, reconciled for real
            ops = []
            for _ in range(20):
                client = f"c{rng.randrange(50)}"
                ticks[client] = ticks.get(client, 0) + 1
                ops.append(ClientOp(
                    op_id=f"{client}-{ticks[client]}", client=client, user=f"u{client}",
                    stream=f"rec/tasks/{rng.randrange(200)}", clock=VectorClock({client: ticks[client]}),
                    hlc=HLCTimestamp(1_700_000_000_000 + written, 0, client),
                    set={"title": f"t{rng.randrange(1000)}", "points": 1},
                ))
            result = reconcile(states[tenant], ops, CONFIG)
            states[tenant] = result.state
            writes = as_stream_writes(result.events)
            await store.append_many(tenant, writes)
            n = sum(len(w.events) for w in writes)
        elif kind < 0.7:  # keystrokes in a shared document
            writes = []
            for _ in range(20):
                before = docs[tenant].get_state()
                texts[tenant].insert(rng.randrange(len(texts[tenant]) + 1), rng.choice("abcdef "))
                writes.append(NewEvent("crdt.update", docs[tenant].get_update(before), actor=Actor("u1", "c1")))
            await store.append(tenant, "doc/shared", writes)
            n = len(writes)
        elif kind < 0.8:  # presence history
            user = f"u{rng.randrange(30)}"
            evs = [NewEvent(rng.choice(["presence.joined", "presence.left"]), {"user": user}, actor=Actor(user))
                   for _ in range(10)]
            await store.append(tenant, f"room/r{rng.randrange(5)}", evs)
            n = len(evs)
        else:  # domain events
            writes = [StreamWrite(f"order/{rng.randrange(500)}",
                                  (NewEvent("order.updated", {"n": written + i},
                                            actor=Actor(f"u{rng.randrange(30)}")),))
                      for i in range(20)]
            # distinct streams per call
            seen, unique = set(), []
            for w in writes:
                if w.stream not in seen:
                    seen.add(w.stream)
                    unique.append(w)
            await store.append_many(tenant, unique)
            n = len(unique)
        written += n
        progress.update(task, completed=min(written, n_events))
    return written


async def bare_read(store) -> tuple[float, int]:
    t0 = time.perf_counter()
    after, n = 0, 0
    while True:
        page = await store.read_log(None, after=after, limit=2000, all_tenants=True)
        if not page.events:
            break
        n += len(page.events)
        after = page.next_after
    return time.perf_counter() - t0, n


async def rebuild(store) -> tuple[float, int, Projector]:
    projector = Projector(store, builtin_projections(), all_tenants=True, batch=2000)
    t0 = time.perf_counter()
    await projector.rebuild()
    return time.perf_counter() - t0, projector.position, projector


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n_events = args.events or (20_000 if args.quick else 200_000)
    runs = args.runs or (3 if args.quick else 5)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite+aiosqlite:///{tmp}/replay.db")
        with Progress(console=console, transient=True) as progress:
            total = await build_log(store, n_events, args.seed, progress)
        reads, rebuilds = [], []
        for _ in range(runs):  # interleaved, so noise hits both alike
            dt, n = await bare_read(store)
            reads.append(n / dt)
            dt, _, projector = await rebuild(store)
            rebuilds.append(total / dt)
        stats = projector.state("stats")
        size = os.path.getsize(f"{tmp}/replay.db")
        await store.close()
    read_eps, rebuild_eps = statistics.median(reads), statistics.median(rebuilds)
    ratio = rebuild_eps / read_eps
    table = Table(title=f"projection rebuild vs bare read — {total:,} events, SQLite, median of {runs}, "
                        f"{os.cpu_count()} cores")
    table.add_column("case")
    table.add_column("events/s", justify="right")
    table.add_row("bare read (decoded)", f"{read_eps:,.0f}")
    table.add_row("rebuild: records, documents, feeds, presence, stats", f"{rebuild_eps:,.0f}")
    table.add_row("ratio rebuild / read", f"{ratio:.2f} (target >= 0.50)")
    console.print(table)
    console.print(f"streams: {len(stats):,}; database: {size / 1e6:.1f} MB")
    print(json.dumps({"rebuild_eps": round(rebuild_eps), "read_eps": round(read_eps),
                      "rebuild_ratio_vs_read": round(ratio, 3), "events": total}))


if __name__ == "__main__":
    asyncio.run(main())
