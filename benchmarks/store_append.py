"""Benchmark: appends to and reads from the event store, against the `eventsourcing` library.

    python benchmarks/store_append.py [--quick] [--pg-url URL] [--runs N]

Cases, on SQLite (a temp file) and PostgreSQL, each on a fresh database:

- ``c1``, ``c32``, ``c256``: single-event ``append`` calls from 1, 32 and 256 concurrent
  asyncio tasks, each task on its own stream with ``expected_version`` checked;
- ``batch``: one task appending 100 events per call;
- ``read``: the whole log of the ``batch`` case read back with ``read_log`` pages,
  decoded into ``RecordedEvent``.

The anchor, in the same run: the `eventsourcing` library (its SQLite and PostgreSQL
persistence), one event per save, from 1 and 32 threads (it is synchronous), two ways:

- ``es-app``: ``Application.save(aggregate)`` after one ``@event`` command, the path its
  users take (domain event → mapper → JSON transcoder → recorder);
- ``es-rec``: ``ApplicationRecorder.insert_events([one StoredEvent])`` with a hand-made
  JSON ``StoredEvent``, which skips its domain model and mapper entirely (the most
  generous measure of its persistence);
- its read: the notification log in pages (``Application.notification_log.select``),
  each notification decoded with the application's mapper into a domain event.

``*_ratio_vs_eventsourcing`` divides our c32 figure by ``Application.save``'s best
figure on the same backend (the better of 1 and 32 threads): the anchor the project
decided on. ``*_ratio_vs_eventsourcing_recorder`` divides it by the best of all four
(``insert_events`` included), the most generous measure of the library. Every case is the median of ``--runs``
repetitions. Without ``--pg-url`` a throwaway PostgreSQL is started with initdb/pg_ctl
on a free loopback port and stopped at the end. Prints a table, saves
benchmarks/out/store_append.png, and prints one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402
from eventsourcing.persistence import StoredEvent  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.engine.events import NewEvent  # noqa: E402
from syncline.store import open_store  # noqa: E402

TENANT = "acme"
EVENT_TYPE = "bench.Happened"
TEXT = "the quick brown fox jumps over the lazy dog, again and again and again"  # ~70 bytes
BATCH_EVENTS = 100
READ_PAGE = 1000  # same page size for our read_log and the library's notification log
TARGETS = {"sqlite_c32_eps": 20_000, "postgres_c32_eps": 15_000, "sqlite_ratio": 8, "postgres_ratio": 25,
           "read_eps": 200_000}

console = Console(highlight=False, width=max(Console().width, 132))


@dataclass(frozen=True)
class Sizes:
    runs: int
    c1: int
    c32: int
    c256: int
    batch: int
    es_c1: int
    es_c32: int


FULL = Sizes(runs=3, c1=2_000, c32=32_000, c256=38_400, batch=60_000, es_c1=1_500, es_c32=3_200)
QUICK = Sizes(runs=1, c1=400, c32=4_800, c256=7_680, batch=10_000, es_c1=300, es_c32=640)


@dataclass
class Result:
    backend: str
    case: str
    samples: list[float] = field(default_factory=list)  # events/s per repetition
    note: str = ""

    @property
    def eps(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


# --------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL 15 on a free loopback port, owned by the `postgres` user when we are root.

    Yields a maintenance URL (postgresql://postgres@127.0.0.1:PORT/postgres); stops the
    server and removes its data directory on the way out, whatever happened.
    """
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        raise SystemExit("initdb/pg_ctl not on PATH: pass --pg-url postgresql+asyncpg://user@host:port/db")
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="syncline-bench-pg."))
    data = base / "pgdata"
    started = False
    try:
        base.chmod(0o755)  # the postgres user must reach its data directory inside
        data.mkdir(mode=0o700)
        if run_as:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True,
        )
        port = _free_port()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{data}'\n"
                "max_connections = 200\nlogging_collector = off\n"
            )
        log = base / "postgres.log"
        log.touch()
        if run_as:
            shutil.chown(log, "postgres", "postgres")
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
                       check=True, capture_output=True)
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class PgServer:
    """Creates and drops one database per case on a server we may only borrow."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url.replace("+asyncpg", "").replace("+psycopg", ""))
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.user = parts.username or "postgres"
        self.password = parts.password or ""
        self.maintenance_db = (parts.path or "/postgres").lstrip("/") or "postgres"
        self._n = 0

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname=self.maintenance_db, autocommit=True) as conn:
            conn.execute(sql)

    @contextmanager
    def database(self) -> Iterator[str]:
        self._n += 1
        name = f"syncline_bench_{os.getpid()}_{self._n}"
        self._admin(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def store_url(self, db: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql+asyncpg://{auth}@{self.host}:{self.port}/{db}"

    def es_env(self, db: str, threads: int) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": db, "POSTGRES_HOST": self.host, "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user, "POSTGRES_PASSWORD": self.password,
            "POSTGRES_POOL_SIZE": str(max(threads, 1)), "POSTGRES_MAX_OVERFLOW": "0",
        }


# --------------------------------------------------------------------- our store


def _event(i: int) -> NewEvent:
    return NewEvent(EVENT_TYPE, {"n": i, "text": TEXT})


async def _single_appends(store: Any, tasks: int, total: int, prefix: str = "t") -> float:
    per_task = total // tasks

    async def writer(k: int) -> None:
        stream = f"bench/{prefix}{k}"
        for v in range(per_task):
            await store.append(TENANT, stream, [_event(v)], expected_version=v)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(tasks)))
    return per_task * tasks / (time.perf_counter() - t0)


async def _batched_appends(store: Any, total: int) -> float:
    calls = total // BATCH_EVENTS
    t0 = time.perf_counter()
    for c in range(calls):
        # 10 streams take turns so stream heads and versions move as in a real log
        stream = f"bench/b{c % 10}"
        await store.append(TENANT, stream, [_event(c * BATCH_EVENTS + i) for i in range(BATCH_EVENTS)])
    return calls * BATCH_EVENTS / (time.perf_counter() - t0)


async def _read_all(store: Any) -> tuple[float, int]:
    t0 = time.perf_counter()
    after, n = 0, 0
    while True:
        page = await store.read_log(TENANT, after=after, limit=READ_PAGE)
        n += len(page.events)
        if page.next_after >= page.head or not page.events:
            break
        after = page.next_after
    return n / (time.perf_counter() - t0), n


async def run_ours(url: str, case: str, size: Sizes, read_runs: int = 0) -> tuple[float, str, list[float]]:
    """One repetition of a case on a fresh database; returns (events/s, note, read samples)."""
    store = await open_store(url)
    try:
        if case == "batch":
            eps = await _batched_appends(store, size.batch)
        else:
            tasks = int(case[1:])
            eps = await _single_appends(store, tasks, getattr(size, case))
        gc_ = getattr(store, "_committer", None)  # observability counters of the group committer
        note = f"{gc_.calls / max(gc_.batches, 1):.1f} calls/commit" if gc_ is not None else ""
        reads: list[float] = []
        for _ in range(read_runs):
            r_eps, n = await _read_all(store)
            expected = size.batch // BATCH_EVENTS * BATCH_EVENTS
            if n != expected:
                raise RuntimeError(f"read {n} events back, expected {expected}")
            reads.append(r_eps)
        return eps, note, reads
    finally:
        await store.close()


# --------------------------------------------------------------------- eventsourcing


class Counter(Aggregate):
    """One stream of the library's benchmark: one `Happened` event per command."""

    def __init__(self) -> None:
        self.n = 0

    @event("Happened")
    def happen(self, n: int, text: str) -> None:
        self.n = n


class BenchApp(Application):
    is_snapshotting_enabled = False
    log_section_size = READ_PAGE


def _threads(n: int, work: Callable[[int], None]) -> float:
    """Run work(k) on n threads released together; the wall time until all are done."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def body(k: int) -> None:
        barrier.wait()
        try:
            work(k)
        except BaseException as e:  # surface worker failures in the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


def run_es(env: dict[str, str], way: str, threads: int, total: int) -> float:
    app = BenchApp(env=env)
    per_thread = total // threads
    try:
        if way == "app":
            aggregates = [Counter() for _ in range(threads)]  # one aggregate (stream) per thread

            def work(k: int) -> None:
                agg = aggregates[k]
                app.save(agg)  # the Created event: the first of per_thread saves
                for i in range(1, per_thread):
                    agg.happen(n=i, text=TEXT)
                    app.save(agg)
        else:
            recorder = app.recorder

            def work(k: int) -> None:
                oid = uuid.uuid4()
                for v in range(1, per_thread + 1):
                    state = json.dumps({"n": v, "text": TEXT}, separators=(",", ":")).encode()
                    recorder.insert_events([StoredEvent(oid, v, f"{__name__}:Counter.Happened", state)])

        elapsed = _threads(threads, work)
        return per_thread * threads / elapsed
    finally:
        app.close()


def run_es_read(env: dict[str, str], total: int, runs: int) -> tuple[list[float], list[float]]:
    """Fill a fresh log with `total` events (100 per insert), then read it back `runs` times:
    (decoded events/s, raw notifications/s)."""
    app = BenchApp(env=env)
    try:
        aggregates = []
        for _ in range(10):
            agg = Counter()
            for i in range(total // 10 - 1):
                agg.happen(n=i, text=TEXT)
            aggregates.append(agg)
        for agg in aggregates:  # insert in chunks of BATCH_EVENTS events per save
            pending = agg.collect_events()
            for i in range(0, len(pending), BATCH_EVENTS):
                app.recorder.insert_events([app.mapper.to_stored_event(e) for e in pending[i:i + BATCH_EVENTS]])
        log, mapper = app.notification_log, app.mapper
        decoded, raw = [], []
        for decode in [True, False] * runs:
            t0 = time.perf_counter()
            start, n = 1, 0
            while True:
                items = log.select(start, READ_PAGE)
                if decode:
                    for item in items:
                        mapper.to_domain_event(item)
                n += len(items)
                if len(items) < READ_PAGE:
                    break
                start = items[-1].id + 1
            if n != total // 10 * 10:
                raise RuntimeError(f"library read {n} notifications back, expected {total // 10 * 10}")
            (decoded if decode else raw).append(n / (time.perf_counter() - t0))
        return decoded, raw
    finally:
        app.close()


# --------------------------------------------------------------------- driver


def benchmark(size: Sizes, pg: PgServer, tmp: Path, only: set[str]) -> dict[tuple[str, str], Result]:
    results: dict[tuple[str, str], Result] = {}
    counter = iter(range(1_000_000))

    def rec(backend: str, case: str) -> Result:
        return results.setdefault((backend, case), Result(backend, case))

    @contextmanager
    def database(backend: str, threads: int = 1) -> Iterator[tuple[str, dict[str, str]]]:
        if backend == "sqlite":
            path = tmp / f"case{next(counter)}.db"
            yield f"sqlite+aiosqlite:///{path}", {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                                                   "SQLITE_DBNAME": str(tmp / f"es{next(counter)}.db")}
        else:
            with pg.database() as db:
                yield pg.store_url(db), pg.es_env(db, threads)

    def show(r: Result, sample: float, extra: str = "") -> None:
        console.log(f"{r.backend:8} {r.case:12} {sample:>10,.0f} ev/s  {extra}")

    for backend in ("sqlite", "postgres"):
        if backend not in only:
            continue
        for rep in range(size.runs):
            for case in ("c1", "c32", "c256", "batch"):
                with database(backend) as (url, _env):
                    read_runs = size.runs if case == "batch" and rep == 0 else 0
                    eps, note, reads = asyncio.run(run_ours(url, case, size, read_runs))
                r = rec(backend, case)
                r.samples.append(eps)
                r.note = note
                show(r, eps, note)
                for x in reads:
                    rr = rec(backend, "read")
                    rr.samples.append(x)
                    show(rr, x, f"{size.batch:,} events, pages of {READ_PAGE}")
            for way in ("app", "rec"):
                for threads, total in ((1, size.es_c1), (32, size.es_c32)):
                    with database(backend, threads) as (_url, env):
                        eps = run_es(env, way, threads, total)
                    r = rec(backend, f"es-{way}-t{threads}")
                    r.samples.append(eps)
                    show(r, eps)
        with database(backend) as (_url, env):
            decoded, raw = run_es_read(env, size.batch, size.runs)
        for case, samples in (("es-read", decoded), ("es-read-raw", raw)):
            r = rec(backend, case)
            r.samples.extend(samples)
            for x in samples:
                show(r, x, f"{size.batch:,} events, pages of {READ_PAGE}")
    return results


ROWS = [
    ("c1", "append, 1 task, 1 event/call"),
    ("c32", "append, 32 tasks, 1 event/call"),
    ("c256", "append, 256 tasks, 1 event/call"),
    ("batch", f"append, 1 task, {BATCH_EVENTS} events/call"),
    ("read", "read whole log, decoded"),
    ("es-app-t1", "eventsourcing Application.save, 1 thread"),
    ("es-app-t32", "eventsourcing Application.save, 32 threads"),
    ("es-rec-t1", "eventsourcing insert_events(1), 1 thread"),
    ("es-rec-t32", "eventsourcing insert_events(1), 32 threads"),
    ("es-read", "eventsourcing notification log, decoded"),
    ("es-read-raw", "eventsourcing notification log, not decoded"),
]


def summarize(results: dict[tuple[str, str], Result], backends: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in backends:
        def eps(case: str) -> float:
            r = results.get((b, case))
            return r.eps if r else 0.0

        anchor = max(eps(c) for c in ("es-app-t1", "es-app-t32"))  # (Application.save: the decided anchor)
        generous = max(anchor, eps("es-rec-t1"), eps("es-rec-t32"))
        for case in ("c1", "c32", "c256", "batch"):
            out[f"{b}_{case}_eps"] = round(eps(case))
        out[f"{b}_read_eps"] = round(eps("read"))
        out[f"{b}_ratio_vs_eventsourcing"] = round(eps("c32") / anchor, 2) if anchor else None
        out[f"{b}_eventsourcing_best_eps"] = round(anchor)
        out[f"{b}_ratio_vs_eventsourcing_recorder"] = round(eps("c32") / generous, 2) if generous else None
        for case in ("es-app-t1", "es-app-t32", "es-rec-t1", "es-rec-t32", "es-read", "es-read-raw"):
            out[f"{b}_{case.replace('-', '_')}_eps"] = round(eps(case))
        r_es = eps("es-read")
        out[f"{b}_read_ratio_vs_eventsourcing"] = round(eps("read") / r_es, 2) if r_es else None
    return out


def print_table(results: dict[tuple[str, str], Result], backends: list[str], summary: dict[str, Any]) -> None:
    table = Table(title="Event store: events/s (median of repetitions)")
    table.add_column("case")
    for b in backends:
        table.add_column(f"{b} ev/s", justify="right")
        table.add_column("runs", justify="right")
    table.add_column("notes")
    for case, label in ROWS:
        cells: list[str] = [label]
        notes = []
        for b in backends:
            r = results.get((b, case))
            cells += [f"{r.eps:,.0f}" if r else "-", str(len(r.samples)) if r else "-"]
            if r and r.note:
                notes.append(f"{b}: {r.note}")
        table.add_row(*cells, "; ".join(notes))
    console.print(table)
    for b in backends:
        best = summary[f"{b}_eventsourcing_best_eps"]
        console.print(
            f"{b}: c32 {summary[f'{b}_c32_eps']:,} ev/s = {summary[f'{b}_ratio_vs_eventsourcing']}× the library's "
            f"Application.save, best of 1 and 32 threads ({best:,} ev/s; "
            f"{summary[f'{b}_ratio_vs_eventsourcing_recorder']}× its bare recorder); "
            f"read {summary[f'{b}_read_eps']:,} ev/s = "
            f"{summary[f'{b}_read_ratio_vs_eventsourcing']}× its decoded notification log"
        )


def save_chart(results: dict[tuple[str, str], Result], backends: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c, _ in ROWS]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        values = [results[(b, c)].eps if (b, c) in results else 0 for c in cases]
        xs = [x + (i - (len(backends) - 1) / 2) * width for x in range(len(cases))]
        bars = ax.bar(xs, values, width, label=b)
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" if v else "" for v in values], fontsize=7, rotation=90,
                     padding=2)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right")
    ax.set_title(f"Syncline store vs eventsourcing ({os.cpu_count()} cores)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition (under a minute)")
    p.add_argument("--pg-url", help="a PostgreSQL server to use (a database is created per case and dropped)")
    p.add_argument("--runs", type=int, help="repetitions per case (default 3, 1 with --quick)")
    p.add_argument("--only", choices=["sqlite", "postgres"], help="one backend only")
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.runs:
        size = Sizes(**{**size.__dict__, "runs": args.runs})
    backends = [args.only] if args.only else ["sqlite", "postgres"]

    # SIGTERM must still run the finally blocks that stop PostgreSQL and remove temp files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console.log(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
                f"{'quick' if args.quick else 'full'} run, {size.runs} repetition(s) per case")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syncline-bench.") as tmp:
        if "postgres" not in backends:
            results = benchmark(size, PgServer("postgresql://unused@127.0.0.1/x"), Path(tmp), set(backends))
        elif args.pg_url:
            results = benchmark(size, PgServer(args.pg_url), Path(tmp), set(backends))
        else:
            with throwaway_postgres() as url:
                console.log(f"throwaway PostgreSQL at {url}")
                results = benchmark(size, PgServer(url), Path(tmp), set(backends))
    summary = summarize(results, backends)
    print_table(results, backends, summary)
    chart = ROOT / "benchmarks" / "out" / "store_append.png"
    save_chart(results, backends, chart)
    console.log(f"chart saved to {chart.relative_to(ROOT)}; {time.perf_counter() - t0:.0f} s in all")
    summary.update(cores=os.cpu_count(), runs=size.runs, quick=args.quick)
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
