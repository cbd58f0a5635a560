"""Real editing traces through the gateway's document path, stored in the log.

    python benchmarks/editing_trace.py [PATH] [--quick] [--store URL] [--non-ascii] [--reps N]
                                       [--traces-dir DIR] [--keystrokes N]

Traces (automerge-paper and friendsforever, from josephg/editing-traces) are read from
``--traces-dir`` or ``$SYNCLINE_TRACES_DIR`` (default ``../shared/data/traces/``); where
one is missing, a trace of the same size generated from a fixed seed stands in, and the
table and the JSON line (``trace``, ``concurrent_trace``) say which was used
(benchmarks/_trace_updates.py, ``open_trace``). ``--keystrokes N`` keeps only each
trace's first N keystrokes (a smoke run). Each keystroke (one patch of the trace) becomes one Yjs update, made by a
pycrdt Doc; the trace's character positions are converted to the UTF-8 byte offsets
pycrdt's ``Text`` uses (benchmarks/_trace_updates.py). The server path is what the
gateway does with a writer's updates (api/ws_yjs.py): ``Document.admit`` on a document
with ``PendingLimits``, the admitted updates queued and appended by one appender (what
queued while an append was in flight goes in the next append, at most 2,048 queued),
each applied at its log position once its append returns. In the same run:

1. **Trace in order** (PATH, default automerge-paper, every keystroke): plain pycrdt
   applying the updates one by one (the anchor) vs the server path
   (``trace_gateway_ratio_vs_pycrdt``), and vs this benchmark's path before issue 19
   (``trace_ratio_vs_pycrdt``, kept comparable with earlier runs: ``check_update``,
   batches of 1,024 with 8 appends in flight, a document without limits); then the
   document rebuilt by a full replay of the stream vs from the snapshot the gateway
   run saved. Every text must equal the trace's ``endContent``.
2. **Out of order** (friendsforever, every keystroke, typed by 3 simulated agents in
   turns of 150 keystrokes, each syncing from the one before): each agent's updates as
   one burst, the last agent first; and all of them shuffled with 5% duplicates. Plain
   pycrdt applying the same order vs the server path. The text must equal
   ``endContent``. Two thirds of the updates wait at once, more than the gateway's
   default bound (10,000 parts, which would close such a writer): the limits here are
   sized to hold them all, as ``SYNCLINE_YJS_PENDING_MAX`` would be for such clients.
3. **Replace-heavy** (PATH): the same keystrokes with every 20th made a replace (the
   character before the cursor deleted and typed again with the new one, in one
   transaction), vs the keystrokes as they are; server-path cost per update.

``--quick``: part 1 and 3 on the whole friendsforever trace (26,078 keystrokes, still
checked against its ``endContent``), or with PATH its first 20,000 keystrokes (checked
against the text those patches make, replayed with plain strings); their figures are
reported under ``quick_...`` keys. Part 2 is the same as in a full run. ``--non-ascii``
swaps some letters of every trace for 2- to 4-byte characters.

Prints a table, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import pycrdt  # noqa: E402
from _trace_updates import (  # noqa: E402
    TEXT,
    TRACES_ENV,
    agent_bursts,
    end_content,
    open_trace,
    patches_of,
    replay,
    shuffled_with_duplicates,
    start_content,
    type_updates,
    with_replaces,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from syncline.engine.documents import CRDT_UPDATE, DocSnapshot, Document, PendingLimits  # noqa: E402
from syncline.engine.events import NewEvent  # noqa: E402
from syncline.engine.filters import EventFilter  # noqa: E402
from syncline.engine.yupdates import InvalidUpdate, check_update  # noqa: E402

DEFAULT_TRACE = "automerge-paper.json.gz"  # names in the traces folder (open_trace)
CONCURRENT_TRACE = "friendsforever_flat.json.gz"
QUICK_KEYSTROKES = 20_000  # with PATH and --quick
TENANT = "bench"
SNAPSHOT_KIND = "ydoc"
PIPELINED_BATCH = 1024  # the previous path: events per append call
PIPELINED_IN_FLIGHT = 8  # and append calls awaiting commit at once
PENDING_UPDATES_MAX = 2048  # what api/ws_yjs.py queues before a writer waits for the append
WRITER_YIELD_EVERY = 32
GATEWAY_LIMITS = PendingLimits()  # the gateway's defaults (SYNCLINE_YJS_PENDING_MAX*)
AGENTS = 3
TURN = 150
DUPLICATES = 0.05
REPLACE_EVERY = 20
SEED = 19


# -- the server path ---------------------------------------------------------


@dataclass
class Served:
    seconds: float
    doc: Document
    stream: str
    admitted: int = 0
    not_new: int = 0  # admit said nothing new: not appended
    refused: int = 0  # admit or apply raised (the gateway closes that client)
    peak_waiting: int = 0  # most parts held waiting after an applied batch
    engine_s: float = 0.0  # of ``seconds``, in Document.admit and Document.apply_update


async def serve(store, stream: str, updates: list[bytes], limits: PendingLimits) -> Served:
    """What the gateway does with one writer's updates (DocRooms.submit/_append_loop):
    admit each, queue it, one appender appends what queued while the previous append
    was in flight, then applies each at its position. The writer's loop gives the event
    loop a turn every WRITER_YIELD_EVERY updates (a socket read of a burst returns many
    frames), and whenever PENDING_UPDATES_MAX updates wait for the append."""
    doc = Document(stream, limits=limits)
    out = Served(0.0, doc, stream)
    queue: list[bytes] = []
    appended = asyncio.Event()
    appender: asyncio.Task | None = None

    async def append_loop() -> None:
        nonlocal queue
        while queue:
            batch, queue = queue, []
            result = await store.append(TENANT, stream, [NewEvent(CRDT_UPDATE, data=u) for u in batch])
            s = result.streams[0]
            position, version = s.first_position, s.first_version
            t = clock()
            for u in batch:
                try:
                    doc.apply_update(u, position=position, version=version)
                except InvalidUpdate:
                    out.refused += 1
                position += 1
                version += 1
            out.engine_s += clock() - t
            parts = doc.waiting[0]
            if parts > out.peak_waiting:
                out.peak_waiting = parts
            appended.set()

    clock = time.perf_counter
    start = clock()
    for i, u in enumerate(updates, 1):
        if i % WRITER_YIELD_EVERY == 0:
            await asyncio.sleep(0)
        t = clock()
        try:
            fresh = doc.admit(u)
        except InvalidUpdate:
            out.refused += 1
            continue
        finally:
            out.engine_s += clock() - t
        if not fresh:
            out.not_new += 1
            continue
        out.admitted += 1
        queue.append(u)
        if appender is None or appender.done():
            appender = asyncio.ensure_future(append_loop())
        while len(queue) >= PENDING_UPDATES_MAX and not appender.done():
            appended.clear()
            await appended.wait()
    if appender is not None:
        await appender
    out.seconds = time.perf_counter() - start
    return out


async def append_pipelined(store, stream: str, updates: list[bytes]) -> Served:
    """This benchmark's path before issue 19 (kept so its figure stays comparable): each
    update checked by ``check_update`` only, appended in batches of 1,024 with 8 appends
    in flight, applied to a document without limits (trusting, as replays are)."""
    doc = Document(stream)
    out = Served(0.0, doc, stream, admitted=len(updates))
    in_flight: deque[tuple[asyncio.Task, list[bytes]]] = deque()

    def apply_committed(result, batch: list[bytes]) -> None:
        first = result.first_position
        for i, u in enumerate(batch):
            doc.apply_update(u, position=first + i)

    start = time.perf_counter()
    for lo in range(0, len(updates), PIPELINED_BATCH):
        batch = updates[lo : lo + PIPELINED_BATCH]
        events = [NewEvent(type=CRDT_UPDATE, data=check_update(u)) for u in batch]
        in_flight.append((asyncio.ensure_future(store.append(TENANT, stream, events)), batch))
        if len(in_flight) >= PIPELINED_IN_FLIGHT:
            task, done_batch = in_flight.popleft()
            apply_committed(await task, done_batch)
    while in_flight:
        task, done_batch = in_flight.popleft()
        apply_committed(await task, done_batch)
    out.seconds = time.perf_counter() - start
    return out


def bare_apply(updates: list[bytes]) -> tuple[float, str]:
    """The anchor: plain pycrdt applying the updates one by one, in the given order."""
    doc = pycrdt.Doc()
    text = doc.get(TEXT, type=pycrdt.Text)
    start = time.perf_counter()
    for u in updates:
        doc.apply_update(u)
    return time.perf_counter() - start, str(text)


class Stores:
    """A fresh store per measurement: a new SQLite file each (default), or new streams
    of the store at ``url``."""

    def __init__(self, url: str | None, tmp: str) -> None:
        self.url, self.tmp, self.n = url, tmp, 0
        self.last_db: str | None = None

    async def open(self, name: str):
        from syncline.store import open_store

        self.n += 1
        if self.url is not None:
            self.last_db = None
            return await open_store(self.url), f"doc/{name}-{os.getpid()}-{self.n}"
        self.last_db = os.path.join(self.tmp, f"{name}-{self.n}.db")
        return await open_store(f"sqlite+aiosqlite:///{self.last_db}"), f"doc/{name}"


async def served(stores: Stores, name: str, updates: list[bytes], limits: PendingLimits | None) -> Served:
    """The server path on a fresh store (``limits`` None: the previous, pipelined path)."""
    store, stream = await stores.open(name)
    try:
        if limits is None:
            return await append_pipelined(store, stream, updates)
        return await serve(store, stream, updates, limits)
    finally:
        await store.close()


# -- part 1: the trace in order, and loading -----------------------------------


async def read_tail(store, stream: str, after: int) -> list:
    """Every event of the stream after a position, through the paged log read."""
    events: list = []
    flt = EventFilter(streams=(stream,))
    while True:
        page = await store.read_log(TENANT, after=after, limit=10_000, filter=flt)
        events.extend(page.events)
        if page.next_after >= page.head:
            return events
        after = page.next_after


async def load_full(store, stream: str) -> tuple[float, Document]:
    start = time.perf_counter()
    events = await store.read_stream(TENANT, stream)
    doc = Document.load(None, events, doc_id=stream)
    return time.perf_counter() - start, doc


async def load_from_snapshot(store, stream: str) -> tuple[float, Document]:
    start = time.perf_counter()
    row = await store.load_snapshot(TENANT, stream, SNAPSHOT_KIND)
    snapshot = None
    after = 0
    if row is not None:
        position, data, digest = row
        snapshot = DocSnapshot(position, bytes(data), digest)
        after = position
    tail = await read_tail(store, stream, after)
    doc = Document.load(snapshot, tail, doc_id=stream)
    return time.perf_counter() - start, doc


def db_bytes(path: str | None) -> int:
    if not path:
        return 0
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def run_trace(stores: Stores, updates: list[bytes]) -> dict:
    store, stream = await stores.open("trace")
    db = stores.last_db
    try:
        s = await serve(store, stream, updates, GATEWAY_LIMITS)
        snapshot = s.doc.snapshot()
        await store.save_snapshot(
            TENANT, stream, SNAPSHOT_KIND, snapshot.position, snapshot.state, snapshot.checksum
        )
        full_s, full_doc = await load_full(store, stream)
        snap_s, snap_doc = await load_from_snapshot(store, stream)
        # Best of three: loading is short and the first run pays for cold caches.
        for _ in range(2):
            full_s = min(full_s, (await load_full(store, stream))[0])
            snap_s = min(snap_s, (await load_from_snapshot(store, stream))[0])
    finally:
        await store.close()
    return {
        "served": s,
        "text": s.doc.text(TEXT),
        "full_text": full_doc.text(TEXT),
        "snap_text": snap_doc.text(TEXT),
        "full_s": full_s,
        "snap_s": snap_s,
        "snapshot_bytes": len(snapshot.state),
        "db_bytes": db_bytes(db),
    }


# -- main ----------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=None, help=f"trace (default {DEFAULT_TRACE})")
    parser.add_argument("--quick", action="store_true",
                        help=f"parts 1 and 3 on {CONCURRENT_TRACE}, "
                        f"or PATH's first {QUICK_KEYSTROKES:,} keystrokes")
    parser.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file per measurement)")
    parser.add_argument("--non-ascii", action="store_true",
                        help="swap some letters of the traces for 2- to 4-byte UTF-8 characters")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of the out-of-order and replace-heavy measurements (default 3; 1 quick)")
    parser.add_argument("--traces-dir", default=None,
                        help=f"folder with the real traces (default ${TRACES_ENV} or ../shared/data/traces); "
                        "a trace missing there is generated from a fixed seed")
    parser.add_argument("--keystrokes", type=int, default=None,
                        help="keep only each trace's first N keystrokes (a smoke run; figures not comparable)")
    args = parser.parse_args(argv)
    if args.traces_dir is not None:
        os.environ[TRACES_ENV] = args.traces_dir
    quick = args.quick
    na = args.non_ascii
    reps = args.reps or (1 if quick else 3)
    console = Console()
    t0 = time.perf_counter()

    # Part 1's keystrokes, and the reference text they must make.
    if args.path is None:
        trace, label = open_trace(CONCURRENT_TRACE if quick else DEFAULT_TRACE)
        limit = None
    else:
        trace, label = open_trace(str(Path(args.path).resolve()))
        limit = QUICK_KEYSTROKES if quick else None
    if args.keystrokes is not None:
        limit = min(limit or args.keystrokes, args.keystrokes)
    console.print(f"trace: {label}")
    start = start_content(trace, non_ascii=na)
    patches = patches_of(trace, limit, non_ascii=na)
    if limit is not None and len(patches) >= limit:
        # A prefix: its text, replayed with plain strings (checked to give endContent
        # when replayed to the end).
        full_ok = replay(patches_of(trace, non_ascii=na), start) == end_content(trace, non_ascii=na)
        expected = replay(patches, start) if full_ok else None
        reference = f"the trace's text at keystroke {len(patches):,} (replayed to the end: endContent {full_ok})"
    else:
        reference = "endContent"
        expected = end_content(trace, non_ascii=na)
    updates, _ = type_updates(patches, start)
    n = len(updates)

    # Part 2's bursts (3 agents on friendsforever, whole).
    ctrace, clabel = open_trace(CONCURRENT_TRACE)
    console.print(f"concurrent trace: {clabel}")
    cstart = start_content(ctrace, non_ascii=na)
    cpatches = patches_of(ctrace, args.keystrokes, non_ascii=na)
    bursts, cexpected = agent_bursts(cpatches, AGENTS, TURN, cstart)
    if args.keystrokes is None:
        cexpected = end_content(ctrace, non_ascii=na)  # (agent_bursts checked its text against the mirror)
    burst_order = [u for b in reversed(bursts) for u in b]
    rnd = random.Random(SEED)
    shuffled = shuffled_with_duplicates([u for b in bursts for u in b], rnd, DUPLICATES)
    ooo_limits = PendingLimits(max_parts=max(GATEWAY_LIMITS.max_parts, len(shuffled)),
                               max_bytes=max(GATEWAY_LIMITS.max_bytes, 4 * sum(map(len, shuffled))))

    # Part 3's sequences (the same keystrokes as part 1, with and without replaces).
    rpatches, n_replaces = with_replaces(patches, REPLACE_EVERY, start)
    rupdates, _ = type_updates(rpatches, start)
    gen_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="syncline-trace-") as tmp:
        stores = Stores(args.store, tmp)

        # 1. In order.
        bare_s, bare_text = bare_apply(updates)
        pipelined = asyncio.run(served(stores, "trace-pipelined", updates, None))
        r = asyncio.run(run_trace(stores, updates))

        # 2. Out of order: anchor and server path alternate, one ratio per pair.
        ooo: dict[str, dict] = {}
        for key, order in (("bursts", burst_order), ("shuffled", shuffled)):
            rows = ooo[key] = {"ratios": [], "anchor": [], "path": [], "anchor_text": True,
                               "text": True, "refused": 0, "peak": 0, "not_new": 0}
            for _ in range(reps):
                a_s, a_text = bare_apply(order)
                s = asyncio.run(served(stores, f"ooo-{key}", order, ooo_limits))
                rows["anchor"].append(len(order) / a_s)
                rows["path"].append(len(order) / s.seconds)
                rows["ratios"].append(a_s / s.seconds)
                rows["anchor_text"] &= a_text == cexpected
                rows["text"] &= s.doc.text(TEXT) == cexpected and not s.doc.pending
                rows["refused"] = max(rows["refused"], s.refused)
                rows["peak"] = max(rows["peak"], s.peak_waiting)
                rows["not_new"] = s.not_new
            rows["n"] = len(order)

        # 3. Replace-heavy vs plain, alternating (plain, replace, replace, plain, ...).
        plain_us: list[float] = []
        replace_us: list[float] = []
        engine_us: dict[str, list[float]] = {"plain": [], "replace": []}
        rep_text = True
        for i in range(reps):
            pair = [("plain", updates), ("replace", rupdates)]
            for name, seq in (pair if i % 2 == 0 else pair[::-1]):
                s = asyncio.run(served(stores, f"replace-{name}", seq, GATEWAY_LIMITS))
                (plain_us if name == "plain" else replace_us).append(s.seconds / len(seq) * 1e6)
                engine_us[name].append(s.engine_s / len(seq) * 1e6)
                rep_text &= expected is not None and s.doc.text(TEXT) == expected

    served_trace: Served = r["served"]
    matches = expected is not None and r["text"] == expected and r["full_text"] == expected \
        and r["snap_text"] == expected and pipelined.doc.text(TEXT) == expected
    bare_rate = n / bare_s
    rate = n / served_trace.seconds
    ratio = rate / bare_rate
    old_rate = n / pipelined.seconds
    old_ratio = old_rate / bare_rate
    payload_bytes = sum(len(u) for u in updates)
    bytes_per_op = (r["db_bytes"] or payload_bytes) / n
    speedup = r["full_s"] / r["snap_s"]
    plain_med, replace_med = median(plain_us), median(replace_us)
    replace_ratio = median([b / a for a, b in zip(plain_us, replace_us)])
    engine_ratio = median([b / a for a, b in zip(engine_us["plain"], engine_us["replace"])])
    bursts_ratio = median(ooo["bursts"]["ratios"])
    shuffled_ratio = median(ooo["shuffled"]["ratios"])
    ooo_ok = all(ooo[k]["text"] for k in ooo)

    title = f"{label}{' (letters swapped for multi-byte characters)' if na else ''}"
    table = Table(title=f"editing trace: {title}, {n:,} keystrokes{' (quick)' if quick else ''}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("[bold]1. in order[/bold]", "")
    table.add_row(f"final text matches {reference}", str(matches))
    table.add_row("anchor text matches", str(bare_text == expected))
    table.add_row("bare pycrdt apply (keystrokes/s)", f"{bare_rate:,.0f}")
    table.add_row("check_update + 8 appends in flight + trusting apply (keystrokes/s)", f"{old_rate:,.0f}")
    table.add_row("  ratio vs bare pycrdt (the previous path)", f"{old_ratio:.3f}")
    table.add_row("gateway: admit + append + apply (keystrokes/s)", f"{rate:,.0f}")
    table.add_row("  of which admit + apply (µs/keystroke)", f"{served_trace.engine_s / n * 1e6:.1f}")
    table.add_row("  ratio vs bare pycrdt (the gateway path)", f"{ratio:.3f}")
    table.add_row("update payload (bytes/keystroke)", f"{payload_bytes / n:.1f}")
    table.add_row("log on disk (bytes/keystroke)", f"{bytes_per_op:.1f}")
    table.add_row("snapshot size (bytes)", f"{r['snapshot_bytes']:,}")
    table.add_row("load by full replay (ms)", f"{r['full_s'] * 1000:.1f}")
    table.add_row("load from snapshot (ms)", f"{r['snap_s'] * 1000:.2f}")
    table.add_row("snapshot speedup", f"{speedup:.0f}x")
    table.add_row(f"[bold]2. out of order[/bold] ({clabel}, {AGENTS} agents, "
                  f"turns of {TURN}; medians of {reps})", "")
    table.add_row("burst sizes (updates per agent)", ", ".join(f"{len(b):,}" for b in bursts))
    for key, what in (("bursts", "bursts, last agent first"),
                      ("shuffled", f"shuffled, {DUPLICATES:.0%} duplicates")):
        o = ooo[key]
        table.add_row(f"{what}: updates", f"{o['n']:,}")
        table.add_row(f"{what}: bare pycrdt (updates/s)", f"{median(o['anchor']):,.0f}")
        table.add_row(f"{what}: admit + append + apply (updates/s)", f"{median(o['path']):,.0f}")
        table.add_row(f"{what}: ratio vs bare pycrdt", f"{median(o['ratios']):.3f}")
        if reps > 1:
            table.add_row("  each repetition", ", ".join(f"{x:.2f}" for x in o["ratios"]))
        table.add_row(f"{what}: text matches endContent (server path / pycrdt)",
                      f"{o['text']} / {o['anchor_text']}")
        table.add_row(f"{what}: most parts waiting (limit {GATEWAY_LIMITS.max_parts:,} by default)",
                      f"{o['peak']:,}")
        table.add_row(f"{what}: not appended (nothing new) / refused", f"{o['not_new']:,} / {o['refused']:,}")
    table.add_row(f"[bold]3. replace-heavy[/bold] ({label}, every {REPLACE_EVERY}th keystroke; "
                  f"medians of {reps})", "")
    table.add_row("replaces", f"{n_replaces:,} of {len(rupdates):,}")
    table.add_row("server path, keystrokes as typed (µs/update)", f"{plain_med:.1f}")
    table.add_row("server path, replace-heavy (µs/update)", f"{replace_med:.1f}")
    table.add_row("cost ratio (replace-heavy / as typed)", f"{replace_ratio:.2f}")
    if reps > 1:
        table.add_row("  each repetition", ", ".join(f"{b / a:.2f}" for a, b in zip(plain_us, replace_us)))
    table.add_row("  of which admit + apply, as typed / replace-heavy (µs/update)",
                  f"{median(engine_us['plain']):.1f} / {median(engine_us['replace']):.1f}")
    table.add_row("  admit + apply cost ratio", f"{engine_ratio:.2f}")
    table.add_row("texts match", str(rep_text))
    table.add_row("generating the updates (s)", f"{gen_s:.1f}")
    console.print(table)

    # Part 1 and 3 figures measure a smaller trace in quick runs: named so.
    q = "quick_" if quick else ""
    print(json.dumps({
        "quick": quick,
        "trace": label,
        "concurrent_trace": clabel,
        "keystrokes_limit": args.keystrokes,
        "non_ascii": na,
        "keystrokes": n,
        "ooo_bursts_updates": ooo["bursts"]["n"],
        "ooo_shuffled_updates": ooo["shuffled"]["n"],
        f"{q}trace_text_matches": matches,
        f"{q}trace_ratio_vs_pycrdt": round(old_ratio, 4),
        f"{q}trace_gateway_ratio_vs_pycrdt": round(ratio, 4),
        f"{q}trace_bytes_per_op": round(bytes_per_op, 2),
        f"{q}snapshot_speedup": round(speedup, 1),
        "ooo_text_matches": ooo_ok,
        "ooo_bursts_ratio_vs_pycrdt": round(bursts_ratio, 4),
        "ooo_shuffled_ratio_vs_pycrdt": round(shuffled_ratio, 4),
        f"{q}replace_heavy_cost_ratio": round(replace_ratio, 3),
        f"{q}replace_heavy_engine_cost_ratio": round(engine_ratio, 3),
    }))
    return 0 if matches and ooo_ok and rep_text else 1


if __name__ == "__main__":
    sys.exit(main())
