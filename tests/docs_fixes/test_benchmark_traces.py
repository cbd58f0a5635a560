"""Benchmarks stand alone: without the real editing traces (a user's clone has no
../shared/data), they run on a seeded, generated trace and say so."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _trace_updates as traces  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def test_a_missing_trace_is_generated_from_a_seed_and_labelled(tmp_path, monkeypatch):
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))  # an empty folder
    trace, label = traces.open_trace("friendsforever_flat.json.gz")
    assert label == "generated(seed=2)"
    patches = traces.patches_of(trace)
    assert len(patches) == traces.TRACE_KEYSTROKES["friendsforever_flat.json.gz"]
    assert traces.replay(patches, trace["startContent"]) == trace["endContent"]  # checks like a real one
    again, _ = traces.open_trace("friendsforever_flat.json.gz")
    assert again == trace  # the same seed, the same trace
    assert any(d for _, d, _ in patches) and any(len(i) > 1 for _, _, i in patches)  # deletes and pastes too


def test_a_real_trace_in_the_folder_is_used_by_name(tmp_path, monkeypatch):
    real = {"startContent": "", "endContent": "hi", "txns": [{"patches": [[0, 0, "h"]]}, {"patches": [[1, 0, "i"]]}]}
    with gzip.open(tmp_path / "friendsforever_flat.json.gz", "wt", encoding="utf-8") as f:
        json.dump(real, f)
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))
    assert traces.open_trace("friendsforever_flat.json.gz") == (real, "friendsforever_flat.json.gz")
    with pytest.raises(FileNotFoundError):
        traces.open_trace("no-such-trace.json.gz")  # not one we can stand in for
    with pytest.raises(FileNotFoundError):
        traces.open_trace(str(tmp_path / "elsewhere" / "automerge-paper.json.gz"))  # a path given: must exist


def test_editing_trace_benchmark_runs_on_the_generated_trace_and_says_so(tmp_path):
    empty = tmp_path / "no-traces"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "editing_trace.py"), "--quick", "--keystrokes", "300",
         "--reps", "1", "--traces-dir", str(empty)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trace"] == "generated(seed=2)" and summary["concurrent_trace"] == "generated(seed=2)"
    assert summary["keystrokes"] == 300 and summary["quick_trace_text_matches"] and summary["ooo_text_matches"]
    assert "trace: generated(seed=2)" in done.stdout


def test_fanout_builds_its_keystrokes_from_the_generated_trace(tmp_path, monkeypatch):
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fanout
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    trace, label = fanout.open_trace(fanout.DEFAULT_TRACE)
    assert label == "generated(seed=1)"
    load = fanout.keystroke_load(trace, 500)
    assert len(load.updates) == 500  # (keystroke_load checks the Yjs text against the trace's)
