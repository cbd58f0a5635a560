"""A real editing trace through the document path, stored in the log.

    python benchmarks/editing_trace.py [PATH] [--quick] [--store URL]

PATH defaults to ../shared/data/traces/automerge-paper.json.gz (format in the
README beside it; nothing is downloaded). Each keystroke (one patch of the trace)
becomes one Yjs update, made by a pycrdt Doc. Then, in the same run:

- anchor: the updates applied one by one to a bare pycrdt Doc;
- Syncline: each update checked (as the gateway checks a peer's update), appended
  as one ``crdt.update`` event to the event store (SQLite by default; several
  appends in flight so the group-commit appender can batch them), and applied to
  an engine ``Document`` at its log position;
- loading: the document rebuilt by a full replay of the stream vs from the
  snapshot the run saved plus the (empty) tail.

Prints a table, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pycrdt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.engine.documents import CRDT_UPDATE, DocSnapshot, Document  # noqa: E402
from syncline.engine.events import NewEvent  # noqa: E402
from syncline.engine.filters import EventFilter  # noqa: E402
from syncline.engine.yupdates import check_update  # noqa: E402

DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "traces" / "automerge-paper.json.gz"
QUICK_KEYSTROKES = 20_000
TENANT = "bench"
STREAM = "doc/automerge-paper"
SNAPSHOT_KIND = "ydoc"
BATCH_EVENTS = 1024  # events per append call
IN_FLIGHT = 8  # append calls awaiting commit at once
TEXT = "text"


def load_trace(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def make_updates(trace: dict, limit: int | None) -> tuple[list[bytes], str]:
    """One update per patch, as an editor would send them; returns (updates, final text)."""
    doc = pycrdt.Doc()
    text = doc.get(TEXT, type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    if trace.get("startContent"):
        text.insert(0, trace["startContent"])
    done = 0
    for txn in trace["txns"]:
        for position, delete_count, inserted in txn["patches"]:
            if limit is not None and done >= limit:
                return updates, str(text)
            with doc.transaction():
                if delete_count:
                    del text[position : position + delete_count]
                if inserted:
                    text.insert(position, inserted)
            done += 1
    return updates, str(text)


def bare_apply(updates: list[bytes]) -> tuple[float, str]:
    doc = pycrdt.Doc()
    start = time.perf_counter()
    for u in updates:
        doc.apply_update(u)
    elapsed = time.perf_counter() - start
    return elapsed, str(doc.get(TEXT, type=pycrdt.Text))


async def store_and_apply(store, updates: list[bytes]) -> tuple[float, Document]:
    """The document path with storage: check, append (batched, several in flight),
    then apply each update at its committed position."""
    doc = Document(STREAM)
    in_flight: deque[tuple[asyncio.Task, list[bytes]]] = deque()

    def apply_committed(result, batch: list[bytes]) -> None:
        first = result.first_position
        for i, u in enumerate(batch):
            doc.apply_update(u, position=first + i)

    start = time.perf_counter()
    for lo in range(0, len(updates), BATCH_EVENTS):
        batch = updates[lo : lo + BATCH_EVENTS]
        events = [NewEvent(type=CRDT_UPDATE, data=check_update(u)) for u in batch]
        in_flight.append((asyncio.ensure_future(store.append(TENANT, STREAM, events)), batch))
        if len(in_flight) >= IN_FLIGHT:
            task, done_batch = in_flight.popleft()
            apply_committed(await task, done_batch)
    while in_flight:
        task, done_batch = in_flight.popleft()
        apply_committed(await task, done_batch)
    return time.perf_counter() - start, doc


async def read_tail(store, after: int) -> list:
    """Every event of the stream after a position, through the paged log read."""
    events: list = []
    flt = EventFilter(streams=(STREAM,))
    while True:
        page = await store.read_log(TENANT, after=after, limit=10_000, filter=flt)
        events.extend(page.events)
        if page.next_after >= page.head:
            return events
        after = page.next_after


async def load_full(store) -> tuple[float, Document]:
    start = time.perf_counter()
    events = await store.read_stream(TENANT, STREAM)
    doc = Document.load(None, events, doc_id=STREAM)
    return time.perf_counter() - start, doc


async def load_from_snapshot(store) -> tuple[float, Document]:
    start = time.perf_counter()
    row = await store.load_snapshot(TENANT, STREAM, SNAPSHOT_KIND)
    snapshot = None
    after = 0
    if row is not None:
        position, data, digest = row
        snapshot = DocSnapshot(position, bytes(data), digest)
        after = position
    tail = await read_tail(store, after)
    doc = Document.load(snapshot, tail, doc_id=STREAM)
    return time.perf_counter() - start, doc


def db_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def run_store(url: str, db_path: str | None, updates: list[bytes]) -> dict:
    from syncline.store import open_store

    store = await open_store(url)
    try:
        write_s, doc = await store_and_apply(store, updates)
        snapshot = doc.snapshot()
        await store.save_snapshot(
            TENANT, STREAM, SNAPSHOT_KIND, snapshot.position, snapshot.state, snapshot.checksum
        )
        full_s, full_doc = await load_full(store)
        snap_s, snap_doc = await load_from_snapshot(store)
        # Best of three: loading is short and the first run pays for cold caches.
        for _ in range(2):
            full_s = min(full_s, (await load_full(store))[0])
            snap_s = min(snap_s, (await load_from_snapshot(store))[0])
    finally:
        await store.close()
    return {
        "write_s": write_s,
        "text": doc.text(TEXT),
        "full_text": full_doc.text(TEXT),
        "snap_text": snap_doc.text(TEXT),
        "full_s": full_s,
        "snap_s": snap_s,
        "snapshot_bytes": len(snapshot.state),
        "db_bytes": db_bytes(db_path) if db_path else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_TRACE))
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_KEYSTROKES} keystrokes")
    parser.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    args = parser.parse_args(argv)

    trace = load_trace(Path(args.path))
    limit = QUICK_KEYSTROKES if args.quick else None
    updates, generated_text = make_updates(trace, limit)
    expected = generated_text if args.quick else trace["endContent"]
    n = len(updates)

    bare_s, bare_text = bare_apply(updates)

    with tempfile.TemporaryDirectory(prefix="syncline-trace-") as tmp:
        db_path = None
        url = args.store
        if url is None:
            db_path = os.path.join(tmp, "trace.db")
            url = f"sqlite+aiosqlite:///{db_path}"
        r = asyncio.run(run_store(url, db_path, updates))

    payload_bytes = sum(len(u) for u in updates)
    matches = r["text"] == expected and r["full_text"] == expected and r["snap_text"] == expected
    bare_rate = n / bare_s
    rate = n / r["write_s"]
    ratio = rate / bare_rate
    bytes_per_op = (r["db_bytes"] or payload_bytes) / n
    speedup = r["full_s"] / r["snap_s"]

    table = Table(title=f"editing trace: {Path(args.path).name} ({n:,} keystrokes)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("final text matches endContent", str(matches))
    table.add_row("anchor text matches", str(bare_text == expected))
    table.add_row("bare pycrdt apply (keystrokes/s)", f"{bare_rate:,.0f}")
    table.add_row("check + append + apply (keystrokes/s)", f"{rate:,.0f}")
    table.add_row("ratio vs bare pycrdt", f"{ratio:.3f}")
    table.add_row("update payload (bytes/keystroke)", f"{payload_bytes / n:.1f}")
    table.add_row("log on disk (bytes/keystroke)", f"{bytes_per_op:.1f}")
    table.add_row("snapshot size (bytes)", f"{r['snapshot_bytes']:,}")
    table.add_row("load by full replay (ms)", f"{r['full_s'] * 1000:.1f}")
    table.add_row("load from snapshot (ms)", f"{r['snap_s'] * 1000:.2f}")
    table.add_row("snapshot speedup", f"{speedup:.0f}x")
    Console(stderr=False).print(table)
    print(
        json.dumps(
            {
                "trace_text_matches": matches,
                "trace_ratio_vs_pycrdt": round(ratio, 4),
                "trace_bytes_per_op": round(bytes_per_op, 2),
                "snapshot_speedup": round(speedup, 1),
            }
        )
    )
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
