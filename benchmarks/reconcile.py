"""Benchmark: reconcile 10,000 offline ops from 100 clients on 1,000 records.

About 10% of the ops are concurrent edits: they were made against a clock that
misses the record's latest op, and write a field that op wrote. Clients come back
online one after the other and submit their queues as one batch each.

    python benchmarks/reconcile.py [--quick] [--runs N] [--seed S]

Prints a table, then, as the last line, one JSON object with ``reconcile_ops_per_s``.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.engine.clocks import HLCTimestamp, VectorClock  # noqa: E402
from syncline.engine.events import RecordedEvent, Retention  # noqa: E402
from syncline.engine.records import (  # noqa: E402
    LWW,
    MANUAL,
    ClientOp,
    CollectionPolicy,
    RecordsState,
    ResolutionConfig,
    fold_record_events,
    merged,
    reconcile,
)

CLIENTS = 100
RECORDS = 1_000
OPS = 10_000
CONCURRENT_SHARE = 0.10
TARGET_OPS_PER_S = 50_000

CONFIG = ResolutionConfig(
    {
        "tasks": CollectionPolicy(
            fields={
                "title": LWW,
                "status": LWW,
                "notes": MANUAL,
                "points": merged("counter"),
                "tags": merged("set_union"),
                "due": merged("max"),
            }
        )
    }
)
FIELDS = ("title", "status", "points", "tags", "due", "notes")
FIELD_WEIGHTS = (30, 25, 20, 12, 10, 3)


def _value(rng: random.Random, name: str, k: int) -> object:
    if name == "points":
        return rng.randint(-3, 5)
    if name == "tags":
        return [f"t{rng.randrange(20)}" for _ in range(rng.randint(1, 2))]
    if name == "due":
        return rng.randrange(1_000_000)
    if name == "status":
        return rng.choice(("todo", "doing", "done"))
    return f"{name} {k}"


def generate(seed: int) -> tuple[list[list[ClientOp]], int]:
    """Per client, its offline queue; and how many ops are concurrent edits."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    # per record: its full clock, the clock before its last op, and that op's fields
    full = [VectorClock() for _ in range(RECORDS)]
    before_last = [VectorClock() for _ in range(RECORDS)]
    last_fields: list[tuple[str, ...]] = [() for _ in range(RECORDS)]
    own = [dict() for _ in range(RECORDS)]  # record -> client -> own op count
    queues: list[list[ClientOp]] = [[] for _ in range(CLIENTS)]
    concurrent = 0
    touched: list[int] = []  # records with at least one op: candidates for a concurrent edit
    for k in range(OPS):
        c = rng.randrange(CLIENTS)
        r = rng.randrange(RECORDS)
        is_concurrent = bool(touched) and rng.random() < CONCURRENT_SHARE
        if is_concurrent and not last_fields[r]:
            r = rng.choice(touched)
        if not last_fields[r]:
            touched.append(r)
        client = f"client-{c:03d}"
        n_own = own[r].get(client, 0) + 1
        own[r][client] = n_own
        if is_concurrent:
            # Made offline without having seen the record's latest op, on its fields.
            concurrent += 1
            base = before_last[r]
            names = last_fields[r]
        else:
            base = full[r]
            # dict.fromkeys, not set: a set's order depends on the hash seed, and the
            # workload must be the same in every process.
            names = tuple(dict.fromkeys(rng.choices(FIELDS, FIELD_WEIGHTS, k=rng.randint(1, 3))))
        counts = dict(base.items())
        counts[client] = max(counts.get(client, 0), n_own)
        clock = VectorClock(counts)
        wall = t0 + k * 7 + rng.randrange(50)  # client clocks are a little off each other
        op = ClientOp(
            op_id=f"op-{k:05d}",
            client=client,
            user=f"user-{c % 37}",
            stream=f"rec/tasks/{r}",
            clock=clock,
            hlc=HLCTimestamp(wall, 0, client),
            set={n: _value(rng, n, k) for n in names},
            base_version=0,
        )
        queues[c].append(op)
        before_last[r] = full[r]
        full[r] = full[r].merge(clock)
        last_fields[r] = names
    return queues, concurrent


def run_once(queues: list[list[ClientOp]]) -> tuple[float, RecordsState, list, list]:
    gc.collect()  # start every run from the same heap: no garbage of the previous run to scan
    state = RecordsState()
    events: list = []
    outcomes: list = []
    start = time.perf_counter()
    for q in queues:
        state, evs, outs = reconcile(state, q, CONFIG)
        events.extend(evs)
        outcomes.extend(outs)
    return time.perf_counter() - start, state, events, outcomes


def as_recorded(stream_events: list) -> list[RecordedEvent]:
    versions: Counter[str] = Counter()
    out = []
    for pos, se in enumerate(stream_events, 1):
        versions[se.stream] += 1
        e = se.event
        out.append(
            RecordedEvent(
                f"ev-{pos}", "t1", se.stream, versions[se.stream], pos, e.type, e.schema, 0,
                e.actor, e.clock, e.data, e.meta, Retention.STANDARD,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 7)

    queues, concurrent = generate(args.seed)
    n_ops = sum(len(q) for q in queues)
    times = []
    state = events = outcomes = None
    for _ in range(runs):
        state = events = outcomes = None
        dt, state, events, outcomes = run_once(queues)
        times.append(dt)
    median = statistics.median(times)
    ops_per_s = n_ops / median

    # Checks that the numbers are about a correct run: replaying the emitted events
    # rebuilds the state, and another arrival order converges to the same data.
    recorded = as_recorded(events)
    t = time.perf_counter()
    rebuilt = fold_record_events(RecordsState(), recorded)
    fold_s = time.perf_counter() - t
    shuffled = [op for q in queues for op in q]
    random.Random(args.seed + 1).shuffle(shuffled)
    other, _, _ = reconcile(RecordsState(), shuffled + shuffled[:500], CONFIG)
    rebuild_ok = rebuilt == state
    converged = other.same_data(state)

    kinds = Counter(o.kind.value for o in outcomes)
    table = Table(title=f"reconcile: {n_ops:,} ops, {CLIENTS} clients, {RECORDS:,} records")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("concurrent edits", f"{concurrent:,} ({concurrent / n_ops:.1%})")
    for kind in ("applied", "merged", "conflict", "duplicate", "rejected"):
        table.add_row(f"outcome {kind}", f"{kinds.get(kind, 0):,}")
    table.add_row("events emitted", f"{len(events):,}")
    table.add_row("runs", str(runs))
    table.add_row("time per run (median)", f"{median * 1000:.1f} ms")
    table.add_row("time per run (min / max)", f"{min(times) * 1000:.1f} / {max(times) * 1000:.1f} ms")
    table.add_row("reconcile ops/s (median)", f"{ops_per_s:,.0f}")
    table.add_row("target ops/s", f"{TARGET_OPS_PER_S:,}")
    table.add_row("fold events/s (rebuild)", f"{len(recorded) / fold_s:,.0f}")
    table.add_row("rebuild == reconcile state", "yes" if rebuild_ok else "NO")
    table.add_row("shuffled + duplicated order converges", "yes" if converged else "NO")
    Console(stderr=False).print(table)
    print(
        json.dumps(
            {
                "reconcile_ops_per_s": round(ops_per_s),
                "ops": n_ops,
                "runs": runs,
                "median_s": round(median, 6),
                "concurrent_ops": concurrent,
                "rebuild_matches": rebuild_ok,
                "converged": converged,
                "meets_target": ops_per_s >= TARGET_OPS_PER_S,
            }
        )
    )


if __name__ == "__main__":
    main()
