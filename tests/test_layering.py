"""Dependencies point inward (docs/design.md, "Layers"): checked on the source, so a violation fails CI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"asyncio", "sqlalchemy", "aiosqlite", "asyncpg", "litestar", "redis", "websockets", "httpx",
              "socket", "sqlite3", "uvicorn", "threading", "subprocess"}
# The engine is pure: no I/O, no process-wide state (the garbage collector), no
# randomness or environment of its own (ids and time are passed in).
IMPURE_MODULES = {"os", "gc", "random", "time"}
PROJECT = {"engine", "store", "bus", "api", "server", "cli", "clientkit", "simulations"}
RULES = {
    "engine": (PROJECT - {"engine"}) | IO_MODULES | IMPURE_MODULES,
    "store": {"bus", "api", "server", "cli", "clientkit", "simulations"},
    "bus": {"api", "server", "cli", "clientkit", "simulations"},
    "server": {"store", "bus", "cli", "clientkit", "simulations", "engine"},
    "clientkit": PROJECT - {"engine", "clientkit"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_package(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_package(node.module))
    return found


def _package(module: str) -> str:
    """The top-level name an import reaches: ``syncline.engine.events`` -> ``engine``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "syncline" and len(parts) > 1 else parts[0]


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


PACKAGES = ("engine", "store", "bus", "api", "server", "cli", "clientkit", "simulations")


def _module_name(path: Path) -> str:
    parts = ["syncline", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at module level (``if TYPE_CHECKING:`` blocks
    and imports inside functions are not edges: they do not run at import time)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: None if is_pkg else -1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                deps.add(name)
                deps.update(f"{name}.{a.name}" for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def test_no_import_cycles_between_modules():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_real_edges():
    graph = import_graph()
    assert "syncline.engine.protocol" in graph["syncline.engine.session"]
    assert "syncline.engine.session" in graph["syncline.api.ws_native"]


def test_test_files_have_unique_basenames():
    """pytest imports test modules by basename (no __init__.py): two test files with one
    name make the whole run fail at collection."""
    seen: dict[str, str] = {}
    clashes = []
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        if "node_modules" in p.parts:
            continue
        if p.name in seen:
            clashes.append((seen[p.name], str(p.relative_to(ROOT))))
        seen[p.name] = str(p.relative_to(ROOT))
    assert not clashes
