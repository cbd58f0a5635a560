"""The committed bundles (api/static/app/) are what ``make web`` builds from web/ and its
package-lock.json, byte for byte: rebuilt into a temporary folder and compared.

``make serve`` needs nothing but Python because the built pages are committed; this test
keeps them from drifting from their sources. Skipped only when Node is not installed;
web/node_modules is (re)installed with ``npm ci`` when it does not match the lock file.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
BUILT = ROOT / "api" / "static" / "app"


def _installed_matches_lock() -> bool:
    """Every package the lock file installs on this machine is in node_modules at its version."""
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    for path, entry in lock.items():
        if not path or entry.get("optional") or entry.get("link"):
            continue  # (the root; platform binaries for other systems)
        manifest = WEB / path / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text()).get("version") != entry.get("version"):
            return False
    return True


def test_committed_bundles_are_rebuilt_byte_for_byte(tmp_path):
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed to rebuild the pages (not installed)")
    if not _installed_matches_lock():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm ci failed: {r.stderr[-2000:]}"
    r = subprocess.run(["node", "build.mjs", str(tmp_path)], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    built = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in BUILT.iterdir()}
    assert sorted(built) == sorted(committed)
    stale = [name for name in built if built[name] != committed[name]]
    assert not stale, f"api/static/app/ is out of date for {stale}: run `make web` and commit the result"


def test_the_kits_dependencies_are_pinned_in_web_at_the_same_versions():
    """The board bundles clientkit-js from its sources; its packages resolve from web/node_modules
    (build.mjs ``nodePaths``) when clientkit-js/node_modules is absent, so web pins the same versions."""
    kit = json.loads((ROOT / "clientkit-js" / "package.json").read_text()).get("dependencies", {})
    web = json.loads((WEB / "package.json").read_text())["dependencies"]
    assert {name: web.get(name) for name in kit} == kit
