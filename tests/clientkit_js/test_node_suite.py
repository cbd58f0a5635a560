"""The JavaScript client kit's own suite (clientkit-js/test, Node's built-in runner), run by
``make test``: the sans-I/O core, the IndexedDB queue (fake-indexeddb), the fold against
the engine's reconcile, and live tests against ``syncline serve`` processes it starts.

``npm ci`` installs the locked dependencies first when node_modules is absent. Skipped only
when Node is not installed; any failure of npm or of a Node test fails this test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2] / "clientkit-js"


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYNCLINE_PYTHON=sys.executable, PYTHONPATH=str(KIT.parent))
    return subprocess.run(cmd, cwd=KIT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # npm ci on a fresh machine, then about a minute of Node tests
def test_clientkit_js_node_suite() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.skip("node is not installed")
    if not (KIT / "node_modules").is_dir():
        assert npm is not None, "npm is needed to install clientkit-js's locked dependencies"
        r = _run([npm, "ci", "--no-audit", "--no-fund"], 600)
        assert r.returncode == 0, f"npm ci failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    r = _run([node, "--test", "--test-reporter=spec", "test/"], 900)
    assert r.returncode == 0, f"node --test failed:\n{r.stdout[-8000:]}\n{r.stderr[-3000:]}"
    assert "# fail 0" in r.stdout or "ℹ fail 0" in r.stdout, r.stdout[-3000:]
