"""Run every benchmark one after the other and collect their headline figures.

    python benchmarks/run_all.py [--quick] [--only NAME ...]

Each benchmark is its own process (it starts what it needs and stops it); this
script only reads the last line of each one's output (one JSON object), prints a
table, and writes benchmarks/out/summary.json. Run it on a quiet machine: the
benchmarks compare against anchors in the same run, but absolute figures move with
whatever else is running.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "store_append", "reconcile", "replay", "editing_trace", "bus",
    "offline_drain", "fanout", "connections", "simulate",
]


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()
    console = Console()
    names = args.only or BENCHMARKS
    results: dict[str, dict] = {}
    table = Table(title=f"benchmarks ({'quick' if args.quick else 'full'}), {os.cpu_count()} cores")
    table.add_column("benchmark")
    table.add_column("seconds", justify="right")
    table.add_column("headline figures")
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        console.print(f"[bold]{name}[/bold]: {' '.join(cmd[1:])}  (load {os.getloadavg()[0]:.1f})")
        t0 = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE.parent)
            figures = last_json(out.stdout) or {"error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            figures = {"error": f"timed out after {args.timeout:.0f} s"}
        elapsed = time.monotonic() - t0
        figures = {"seconds": round(elapsed, 1), "load_after": round(os.getloadavg()[0], 2), **figures}
        results[name] = figures
        shown = {k: v for k, v in figures.items() if not isinstance(v, (dict, list)) and k not in ("seconds",)}
        table.add_row(name, f"{elapsed:.0f}", ", ".join(f"{k}={v}" for k, v in list(shown.items())[:8]))
    console.print(table)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "summary.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({name: {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                      for name, r in results.items()}))


if __name__ == "__main__":
    main()
