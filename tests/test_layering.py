"""Dependencies point inward (DESIGN.md §2): checked on the source, so a violation fails CI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"asyncio", "sqlalchemy", "aiosqlite", "asyncpg", "litestar", "redis", "websockets", "httpx",
              "socket", "sqlite3", "uvicorn", "threading", "subprocess"}
RULES = {
    "engine": {"store", "api", "clientkit", "simulations"} | IO_MODULES,
    "store": {"api", "clientkit", "simulations"},
    "clientkit": {"store", "api", "simulations"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_only_inward(package):
    bad = {
        str(p.relative_to(ROOT)): sorted(imports(p) & RULES[package])
        for p in (ROOT / package).rglob("*.py")
        if imports(p) & RULES[package]
    }
    assert not bad, f"{package}/ imports what it must not: {bad}"


def test_engine_reads_no_wall_clock():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "engine").rglob("*.py")
        if any(s in p.read_text() for s in ("time.time(", "datetime.now(", "datetime.utcnow(", "time.monotonic("))
    ]
    assert not offenders
