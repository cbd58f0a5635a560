"""Simulation benchmark: `python benchmarks/simulate.py [--quick]`.

Simulated client ops per second, wall time of 1,000 clients x 100 ops with
partitions and 5% loss (target < 60 s), and a 10,000-client run's peak RSS
(target < 4 GiB; measured in a child process). Last line: JSON.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from simulations import scenarios  # noqa: E402
from simulations.sim import Params, run  # noqa: E402


def bench(clients: int, ops: int, seed: int = 1):
    sc = scenarios.get("bench-1000x100").with_(ops_per_client=ops)
    result, _ = run(sc, Params(clients=clients, seed=seed))
    return result


def main() -> None:
    quick = "--quick" in sys.argv
    if "--child-10k" in sys.argv:
        r = bench(10_000, 2 if quick else 5)
        print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ok": r.ok}))
        return
    n, ops = (200, 20) if quick else (1_000, 100)
    r = bench(n, ops)
    ops_per_s = r.ops_created / r.wall_s
    child = subprocess.run([sys.executable, __file__, "--child-10k", *(["--quick"] if quick else [])],
                           capture_output=True, text=True, check=True)
    rss = json.loads(child.stdout.strip().splitlines()[-1])
    t = Table(title="simulation benchmark" + (" (quick)" if quick else ""))
    for col in ("measure", "value", "target"):
        t.add_column(col)
    t.add_row("simulated client ops/s", f"{ops_per_s:,.0f}", "")
    t.add_row(f"{n} clients x {ops} ops, partitions, 5% loss", f"{r.wall_s:.1f} s ({'ok' if r.ok else 'VIOLATIONS'})",
              "< 60 s" if not quick else "")
    t.add_row("10,000 clients peak RSS", f"{rss['rss_mb']:.0f} MiB", "< 4096 MiB")
    Console().print(t)
    print(json.dumps({"sim_ops_per_s": round(ops_per_s), "sim_1000x100_s": round(r.wall_s, 2),
                      "sim_10k_peak_rss_mb": round(rss["rss_mb"])}))


if __name__ == "__main__":
    main()
