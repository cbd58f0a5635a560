"""Simulation benchmark: `python benchmarks/simulate.py [--quick] [--runs N]`.

Simulated client ops per second, wall time of 1,000 clients x 100 ops with
partitions and 5% loss (target < 60 s), and a 10,000-client run's peak RSS
(target < 4 GiB). Every run is its own child process: its peak RSS comes from
``os.wait4`` (the child's rusage), so one run never pollutes another's. Medians
over ``--runs`` (default 3) runs of the 1,000-client scenario. The machine's load
average is printed before and after: other work on the box inflates wall times
(CPU seconds are reported next to them). Last line: JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.simulations import scenarios  # noqa: E402
from syncline.simulations.sim import Params, run  # noqa: E402

CHILD = "--child"


def bench(clients: int, ops: int, seed: int) -> dict:
    sc = scenarios.get("bench-1000x100").with_(ops_per_client=ops)
    # The cyclic GC is tuned for this process only (it runs nothing but the simulation):
    # a thousand live replicas keep millions of containers alive, and with the default
    # thresholds (700, 10, 10) the collector rescanned them over and over (~20% of the
    # CPU time at 1,000 clients, growing faster than the work). Young collections every
    # 100,000 allocations instead of 700 find the same garbage: the run makes almost no
    # cyclic garbage (a few hundred objects per run), so memory does not grow for it
    # (the 10,000-client run reports the peak). The work simulated is unchanged.
    gc.set_threshold(100_000, 50, 100)
    cpu0 = time.process_time()
    result, _ = run(sc, Params(clients=clients, seed=seed))
    return {"clients": clients, "ops_per_client": ops, "seed": seed, "ok": result.ok,
            "violations": sorted({v.checker for v in result.violations}), "wall_s": result.wall_s,
            "cpu_s": time.process_time() - cpu0, "ops": result.ops_created, "steps": result.steps,
            "events": result.events, "virtual_ms": result.virtual_ms, "trace_hash": result.trace_hash[:16]}


def in_child(clients: int, ops: int, seed: int) -> dict:
    """One run in a fresh interpreter; adds its peak RSS (MiB) from the child's rusage."""
    proc = subprocess.Popen([sys.executable, __file__, CHILD, str(clients), str(ops), str(seed)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child run {clients}x{ops} failed with exit code {proc.returncode}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return r


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == CHILD:
        print(json.dumps(bench(int(argv[1]), int(argv[2]), int(argv[3]))))
        return
    parser = argparse.ArgumentParser(description="Simulated clients: ops/s, the 1000x100 wall time, 10k-client RSS.")
    parser.add_argument("--quick", action="store_true", help="200 clients x 20 ops, one run")
    parser.add_argument("--runs", type=int, help="runs of the timed case (default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    n, ops = (200, 20) if quick else (1_000, 100)
    big_n, big_ops = 10_000, 2  # the memory target: 10k live cores; ops add time, not memory
    console = Console()
    console.print(f"cpus={os.cpu_count()} load average before: {load()}")
    results = []
    for i in range(runs):
        r = in_child(n, ops, seed=1)
        results.append(r)
        console.print(f"run {i + 1}/{runs}: {n}x{ops} wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, "
                      f"{r['ops']} ops, ok={r['ok']} {r['violations'] or ''} load {load()}")
    big = in_child(big_n, big_ops, seed=1)
    console.print(f"{big_n}x{big_ops}: wall {big['wall_s']:.1f} s, cpu {big['cpu_s']:.1f} s, "
                  f"peak RSS {big['peak_rss_mb']:.0f} MiB, ok={big['ok']} {big['violations'] or ''}")
    console.print(f"load average after: {load()}")
    wall = statistics.median(r["wall_s"] for r in results)
    cpu = statistics.median(r["cpu_s"] for r in results)
    ops_per_s = statistics.median(r["ops"] / r["wall_s"] for r in results)
    ok = all(r["ok"] for r in results)
    t = Table(title="simulation benchmark" + (" (quick)" if quick else "") + f", median of {runs}")
    for col in ("measure", "value", "target"):
        t.add_column(col)
    t.add_row("simulated client ops/s (wall)", f"{ops_per_s:,.0f}", "")
    t.add_row(f"{n} clients x {ops} ops, partitions, 5% loss", f"{wall:.1f} s wall, {cpu:.1f} s cpu "
              f"({'ok' if ok else 'VIOLATIONS'})", "< 60 s" if not quick else "")
    t.add_row(f"{big_n:,} clients x {big_ops} ops peak RSS", f"{big['peak_rss_mb']:.0f} MiB "
              f"({big['wall_s']:.0f} s wall, {'ok' if big['ok'] else 'VIOLATIONS'})", "< 4096 MiB")
    console.print(t)
    print(json.dumps({"sim_ops_per_s": round(ops_per_s), "sim_1000x100_s": round(wall, 2),
                      "sim_10k_peak_rss_mb": round(big["peak_rss_mb"])}))


if __name__ == "__main__":
    main()
