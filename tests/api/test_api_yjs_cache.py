"""The Yjs endpoint's document cache (engine.doccache wired into api/ws_yjs.py) and its
batched write path: documents outlive their last connection for the idle time, are
unloaded after a snapshot, and the memory budget unloads the least recently used."""
from __future__ import annotations

import asyncio

import pycrdt
from test_api_yjs import texts, wait_until, yclient
from waiting import until

from syncline.store import history


def loaded(srv, doc: str, tenant: str = "acme") -> bool:
    return (tenant, doc) in srv.gw.yjs.rooms


async def test_idle_document_stays_loaded_then_unloads_after_a_snapshot(gateway):
    srv = gateway(yjs_doc_idle_s=3.0)
    d = pycrdt.Doc()
    async with yclient(srv, "idle", d, user="alice"):
        d.get("text", type=pycrdt.Text).insert(0, "kept")
        await wait_until(lambda: loaded(srv, "idle") and srv.gw.yjs.rooms[("acme", "idle")].document.tail_events)
    assert loaded(srv, "idle")  # the last connection left, the document did not
    await wait_until(lambda: not loaded(srv, "idle"), timeout=20)
    # the snapshot is saved by a task started as the document is unloaded
    async def saved():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            srv.gw.store.load_snapshot("acme", "doc/idle", history.DOC_SNAPSHOT_KIND), srv.loop))

    snap = await until(saved, 10, "the snapshot to be saved", interval=0.05)
    doc = pycrdt.Doc()
    doc.apply_update(snap[1] if isinstance(snap, tuple) else snap.state)
    assert texts(doc) == "kept"
    again = pycrdt.Doc()  # and it loads again with everything
    async with yclient(srv, "idle", again, user="bob"):
        await wait_until(lambda: texts(again) == "kept")


async def test_memory_budget_unloads_least_recently_used_idle_document(gateway):
    srv = gateway(yjs_doc_idle_s=600, yjs_doc_memory_budget_bytes=1)
    a, b = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(srv, "a", a, user="alice"):
        a.get("text", type=pycrdt.Text).insert(0, "A")
        await wait_until(lambda: srv.gw.yjs.rooms[("acme", "a")].document.tail_events == 1)
    async with yclient(srv, "b", b, user="alice"):
        await wait_until(lambda: not loaded(srv, "a"))  # over budget: the idle one goes
        assert loaded(srv, "b")  # the pinned one stays, budget or not
    again = pycrdt.Doc()
    async with yclient(srv, "a", again, user="bob"):
        await wait_until(lambda: texts(again) == "A")


async def test_burst_of_updates_appended_in_order_and_relayed_in_order(srv):
    w, r = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(srv, "burst", w, user="alice"), yclient(srv, "burst", r, user="bob") as rch:
        t = w.get("text", type=pycrdt.Text)
        for i in range(300):
            t.insert(len(str(t)), chr(ord("a") + i % 26))
        await wait_until(lambda: texts(r) == texts(w), timeout=15)
        assert rch.received  # nothing buffered on the reader's side beyond what it applied
    stream = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        srv.gw.store.read_stream("acme", "doc/burst"), srv.loop))
    events = getattr(stream, "events", stream)
    assert len(events) == 300
    assert [e.version for e in events] == list(range(1, 301))
    replay = pycrdt.Doc()
    for e in events:  # the log alone, in its order, rebuilds the text
        replay.apply_update(e.data)
    assert texts(replay) == texts(w)
