"""Two `syncline serve` processes on ONE SQLite file, no Redis (the README says Redis is
optional). Issue 13, part 1: each gateway's Yjs rooms must follow the log, so

- pycrdt clients on either gateway see each other's edits within 2 s;
- a snapshot written when a room goes idle holds every update at or below its position;
- a fresh third gateway on the same file serves the full text.

One pair of gateways serves the module (each test has its own document).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pycrdt
import pytest
from cluster import Cluster
from rtclients import converges, log_updates, replay, text_of, until, yclient

IDLE_ENV = {"SYNCLINE_YJS_DOC_IDLE_S": "1"}


@pytest.fixture(scope="module")
def sq(tmp_path_factory, rt_gateways):
    """Two gateways (``SYNCLINE_RT_GATEWAYS``) on one SQLite file, no Redis, no proxy."""
    work = tmp_path_factory.mktemp("sqlite-shared")
    c = Cluster(work, f"sqlite+aiosqlite:///{work / 'shared.db'}", n=rt_gateways, env=IDLE_ENV, proxy=False,
                label="sq")
    try:
        yield c.start()
    finally:
        c.close()


def _path(c: Cluster) -> Path:
    return Path(c.db_url.removeprefix("sqlite+aiosqlite:///"))


def _snapshots(path: Path, stream: str) -> list[tuple[int, bytes, str]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT position, data, checksum FROM snapshots "
                           "WHERE tenant = ? AND stream = ? AND kind = 'ydoc' ORDER BY position",
                           ("acme", stream)).fetchall()
    finally:
        con.close()
    return [(int(p), bytes(d), c) for p, d, c in rows]


async def test_clients_on_each_gateway_converge_within_2s(sq):
    c = sq
    da, db = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(c.a.ws_url, "notes", da, user="alice"), yclient(c.b.ws_url, "notes", db, user="bob"):
        ta, tb = da.get("text", type=pycrdt.Text), db.get("text", type=pycrdt.Text)
        # one direction at a time, then both at once
        ta.insert(0, "A1;")
        a_to_b = await converges(lambda: "A1;" in text_of(db), 2)
        tb.insert(0, "B1;")
        b_to_a = await converges(lambda: "B1;" in text_of(da), 2)
        ta.insert(len(ta), "A2;")
        tb.insert(len(tb), "B2;")
        both = await converges(lambda: text_of(da) == text_of(db) and len(text_of(da)) == 12, 2)
        result = {"A->B": a_to_b, "B->A": b_to_a, "concurrent": both}
        assert None not in result.values(), (
            f"seconds to converge across the two gateways (None: not within 2 s): {result}; "
            f"gateway A's client has {text_of(da)!r}, B's has {text_of(db)!r}")
    # the log has every update, from both gateways
    assert len(log_updates(c.a, "notes")) >= 4


async def test_snapshots_hold_every_update_below_their_position_and_a_fresh_gateway_loads_everything(
        sq, cluster_factory):
    c = sq
    path = _path(c)
    doc = "snap"
    words = ["alpha ", "beta ", "gamma ", "delta "]
    # Writers interleave across the processes: positions alternate between gateways A and B.
    da, db = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(c.a.ws_url, doc, da, user="alice"), yclient(c.b.ws_url, doc, db, user="bob"):
        for i, word in enumerate(words):
            d = da if i % 2 == 0 else db
            t = d.get("text", type=pycrdt.Text)
            t.insert(len(t), word)
            await until(lambda n=i + 1: len(log_updates(c.a, doc)) >= n, 5, f"update {i + 1} in the log")
    updates = log_updates(c.a, doc)
    full = text_of(replay(updates))
    assert sorted(full.split()) == sorted(w.strip() for w in words), full

    # Both rooms go idle (1 s) and are unloaded; each writes a snapshot of its tail.
    async def unloaded() -> bool:
        return all(g.metric("syncline_docs_loaded") in (0.0, None) for g in c.gateways)
    await until(unloaded, 15, "both gateways to unload the idle document")
    await until(lambda: _snapshots(path, f"doc/{doc}"), 10, "a snapshot of doc/snap")
    # a second gateway's snapshot may still be on its way: wait until the set stops changing
    previous: list = []

    async def stable() -> bool:
        nonlocal previous
        now = _snapshots(path, f"doc/{doc}")
        same, previous = now == previous, now
        return same
    await until(stable, 5, "the snapshots to settle", interval=0.25)
    snaps = _snapshots(path, f"doc/{doc}")

    problems = []
    for position, state, _checksum in snaps:
        snap_doc = pycrdt.Doc()
        snap_doc.apply_update(state)
        expected = replay(updates, upto=position)
        missing = [p for p, u in updates if p <= position and _lacks(snap_doc, u)]
        if text_of(snap_doc) != text_of(expected) or missing:
            problems.append(f"the snapshot at position {position} has {text_of(snap_doc)!r}; the log up to "
                            f"{position} replays to {text_of(expected)!r}; it lacks the updates at {missing}")

    # A fresh gateway (a new process on the same file) serves the whole document.
    fresh = cluster_factory(c.db_url, env=IDLE_ENV, proxy=False, n=1, label="fresh")
    late = pycrdt.Doc()
    async with yclient(fresh[0].ws_url, doc, late, user="carol"):
        if await converges(lambda: text_of(late) == full, 3) is None:
            problems.append(f"a fresh gateway serves {text_of(late)!r}; the log holds {full!r}")
    if problems:
        pytest.fail("\n".join(problems) + f"\n(log positions of doc/{doc}: {[p for p, _ in updates]}; "
                    f"snapshots at {[p for p, _, _ in snaps]})", pytrace=False)


def _lacks(doc: pycrdt.Doc, update: bytes) -> bool:
    """Whether applying ``update`` would change ``doc`` (it holds structs or deletions the doc lacks)."""
    probe = pycrdt.Doc()
    probe.apply_update(doc.get_update())
    before = probe.get_state(), text_of(probe)
    probe.apply_update(update)
    return (probe.get_state(), text_of(probe)) != before
