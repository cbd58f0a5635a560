"""Every benchmark script still starts: its imports resolve and it parses its options.

Benchmarks are not run by the suite (speed is measured on a quiet machine, not asserted
in tests), so a moved helper module can break one unnoticed; ``--help`` runs each
script's module-level code (imports included) and its argument parser, nothing more.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (modules whose name starts with "_" are helpers the scripts share, not benchmarks)
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_is_listed_by_run_all():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert sorted(f"{name}.py" for name in run_all.BENCHMARKS) == [s for s in SCRIPTS if s != "run_all.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_starts(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
