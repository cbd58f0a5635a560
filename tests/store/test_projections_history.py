"""Projections, time travel, deltas and snapshots over random histories.

rebuild from zero == live result; time travel at P == what a projection folded up to
P held; snapshot at P + delta after P == snapshot at the head.
"""
from __future__ import annotations

import asyncio

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import until

from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.events import Actor, NewEvent
from syncline.engine.projections import builtin_projections
from syncline.engine.projections.feeds import page
from syncline.engine.records import LWW, ClientOp, CollectionPolicy, ResolutionConfig, merged
from syncline.engine.syncdata import InvalidCursor, SnapshotChecksumMismatch, assemble_snapshot, chunk_snapshot
from syncline.store import open_store
from syncline.store.history import load_document, record_at, save_doc_snapshot
from syncline.store.projector import Projector
from syncline.store.records_service import RecordsService
from syncline.store.sync import delta, state_snapshot

CONFIG = ResolutionConfig({"notes": CollectionPolicy(fields={"title": LWW, "likes": merged("counter")})})

STEP = st.one_of(
    st.tuples(st.just("op"), st.sampled_from(["acme", "globex"]), st.integers(0, 2), st.integers(0, 3),
              st.text("abc", max_size=3)),
    st.tuples(st.just("type"), st.sampled_from(["acme", "globex"]), st.integers(0, 1),
              st.text("xyz", min_size=1, max_size=4)),
    st.tuples(st.just("presence"), st.sampled_from(["acme", "globex"]), st.sampled_from(["joined", "left"]),
              st.sampled_from(["ann", "bob"])),
    st.tuples(st.just("event"), st.sampled_from(["acme", "globex"]), st.sampled_from(["order/1", "room/r1"]),
              st.sampled_from(["ann", "bob", ""])),
)


class History:
    """Drives a store with a random sequence of record ops, Yjs edits and other events."""

    def __init__(self, store):
        self.store = store
        self.records = RecordsService(store, CONFIG)
        self.docs: dict[tuple[str, int], pycrdt.Doc] = {}
        self.ticks: dict[str, int] = {}
        self.n = 0

    async def step(self, s) -> None:
        self.n += 1
        kind, tenant = s[0], s[1]
        if kind == "op":
            _, _, rec, client, title = s
            cid = f"c{client}"
            self.ticks[cid] = self.ticks.get(cid, 0) + 1
            op = ClientOp(
                op_id=f"{tenant}-{cid}-{self.n}", client=cid, user=f"u{client}", stream=f"rec/notes/{rec}",
                clock=VectorClock({cid: self.ticks[cid]}), hlc=HLCTimestamp(1_000 + self.n, 0, cid),
                set={"title": title, "likes": 1},
            )
            outcomes = await self.records.submit(tenant, [op])
            assert outcomes[0].kind.value in ("applied", "merged")
        elif kind == "type":
            _, _, d, text = s
            doc = self.docs.setdefault((tenant, d), pycrdt.Doc())
            before = doc.get_state()
            t = doc.get("text", type=pycrdt.Text)
            t.insert(len(str(t)), text)
            update = doc.get_update(before)
            await self.store.append(tenant, f"doc/d{d}", [NewEvent("crdt.update", update)])
        elif kind == "presence":
            _, _, what, user = s
            await self.store.append(
                tenant, "room/r1", [NewEvent(f"presence.{what}", {"user": user}, actor=Actor(user))]
            )
        else:
            _, _, stream, user = s
            await self.store.append(tenant, stream, [NewEvent("thing.happened", {"n": self.n}, actor=Actor(user))])


def same_states(a: Projector, b: Projector) -> None:
    ra, rb = a.state("records"), b.state("records")
    assert ra.keys() == rb.keys() and all(ra[t].same_data(rb[t]) for t in ra)
    da, db = a.state("documents"), b.state("documents")
    assert da.docs.keys() == db.docs.keys()
    assert all(da.docs[k].text() == db.docs[k].text() for k in da.docs)
    fa, fb = a.state("feeds"), b.state("feeds")
    assert {k: list(v) for k, v in fa.by_user.items()} == {k: list(v) for k, v in fb.by_user.items()}
    assert {k: list(v) for k, v in fa.by_room.items()} == {k: list(v) for k, v in fb.by_room.items()}
    pa, pb = a.state("presence"), b.state("presence")
    assert pa.present == pb.present and {k: list(v) for k, v in pa.history.items()} == {
        k: list(v) for k, v in pb.history.items()}
    assert a.state("stats") == b.state("stats")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=30), cut=st.floats(0, 1))
def test_rebuild_equals_live_and_time_travel_equals_live_at_p(steps, cut):
    async def go():
        store = await open_store("memory://", poll_interval_s=0.05)
        live = Projector(store, builtin_projections(), all_tenants=True, batch=7)
        task = asyncio.create_task(live.run())
        h = History(store)
        p_cut = None
        at_cut = None
        for i, s in enumerate(steps):
            await h.step(s)
            if p_cut is None and i >= int(cut * (len(steps) - 1)):
                p_cut = await store.head_position()
                at_cut = Projector(store, builtin_projections(), all_tenants=True)
                await at_cut.catch_up(until=p_cut)
        head = await store.head_position()
        await until(lambda: live.position >= head, 5, "the live projector to reach the head")
        task.cancel()
        rebuilt = Projector(store, builtin_projections(), all_tenants=True, batch=5)
        await rebuilt.rebuild()
        same_states(live, rebuilt)
        # time travel: every record and document at p_cut equals the projection at p_cut
        for tenant, recs in rebuilt.state("records").items():
            for stream in recs.records:
                then = await record_at(store, tenant, stream, position=p_cut)
                want = at_cut.state("records").get(tenant)
                want = want.get(stream) if want is not None else None
                if want is None or not want.fields:
                    assert not then.fields
                else:
                    assert then.same_data(want)
        for (tenant, stream), doc in at_cut.state("documents").docs.items():
            assert (await load_document(store, tenant, stream, position=p_cut)).text() == doc.text()
        await store.close()

    asyncio.run(go())


async def test_document_snapshot_plus_tail_and_time_travel_on_sqlite(sqlite_url):
    store = await open_store(sqlite_url)
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    positions = []
    for i, word in enumerate(["alpha ", "beta ", "gamma ", "delta "]):
        before = doc.get_state()
        text.insert(len(str(text)), word)
        r = await store.append("acme", "doc/paper", [NewEvent("crdt.update", doc.get_update(before))])
        positions.append(r.last_position)
        if i == 1:
            await save_doc_snapshot(store, "acme", "doc/paper", await load_document(store, "acme", "doc/paper"))
    assert (await load_document(store, "acme", "doc/paper")).text() == "alpha beta gamma delta "
    assert (await load_document(store, "acme", "doc/paper", position=positions[0])).text() == "alpha "
    assert (await load_document(store, "acme", "doc/paper", position=positions[2])).text() == "alpha beta gamma "
    # a corrupt snapshot (derived data) is ignored: the log still answers
    await store.save_snapshot("acme", "doc/paper", "ydoc", positions[2], b"garbage", "0" * 64)
    assert (await load_document(store, "acme", "doc/paper")).text() == "alpha beta gamma delta "
    assert (await load_document(store, "globex", "doc/paper")).text() == ""
    await store.close()


async def test_delta_cursor_continues_and_is_bound_to_its_selection(store):
    for i in range(7):
        await store.append("acme", f"rec/notes/{i % 2}", [NewEvent("thing.happened", {"i": i})])
        await store.append("acme", "order/1", [NewEvent("thing.happened", {"i": i})])
    got, cursor = [], None
    while True:
        d = await delta(store, "acme", prefixes=("rec/",), cursor=cursor, limit=3)
        got += [e.data["i"] for e in d.events]
        cursor = d.cursor
        if d.done:
            break
    assert got == list(range(7))
    again = await delta(store, "acme", prefixes=("rec/",), cursor=cursor)
    assert again.events == () and again.done
    with pytest.raises(InvalidCursor):
        await delta(store, "acme", prefixes=("order/",), cursor=cursor)
    with pytest.raises(InvalidCursor):
        await delta(store, "acme", prefixes=("rec/",), cursor="not-a-cursor!")
    assert (await delta(store, "globex", prefixes=("rec/",))).events == ()


async def test_snapshot_at_p_plus_delta_equals_snapshot_at_head(store):
    svc = RecordsService(store, CONFIG)
    for n in range(6):
        op = ClientOp(op_id=f"o{n}", client="c1", user="u", stream=f"rec/notes/{n % 2}",
                      clock=VectorClock({"c1": n + 1}), hlc=HLCTimestamp(10 + n, 0, "c1"),
                      set={"title": f"t{n}", "likes": 1})
        await svc.submit("acme", [op])
        if n == 2:
            mid = await state_snapshot(store, "acme", prefixes=("rec/",))
    full = await state_snapshot(store, "acme", prefixes=("rec/",))
    assert full.content["rec/notes/0"]["values"] == {"title": "t4", "likes": 3}
    assert mid.content["rec/notes/0"]["values"] == {"title": "t2", "likes": 2}
    rest = await delta(store, "acme", prefixes=("rec/",), after=mid.position, limit=1000)
    replayed = RecordsService(store, CONFIG)
    assert {e.position for e in rest.events} == set(range(mid.position + 1, full.position + 1))
    assert (await replayed.record("acme", "rec/notes/1")).values() == full.content["rec/notes/1"]["values"]
    # chunked delivery round-trips and refuses tampering
    chunks = chunk_snapshot(full.position, full.content, full.checksum, chunk_bytes=40)
    assert len(chunks) > 1
    assert assemble_snapshot(list(reversed(chunks))) == (full.position, full.content, full.checksum)
    bad = list(chunks)
    bad[1] = type(bad[1])(bad[1].index, bad[1].total, bad[1].checksum, b"x" * len(bad[1].data))
    with pytest.raises(SnapshotChecksumMismatch):
        assemble_snapshot(bad)
    with pytest.raises(SnapshotChecksumMismatch):
        assemble_snapshot(chunks[:-1])


def test_feed_pages_newest_first():
    from collections import deque

    from syncline.engine.projections.feeds import FeedItem

    feed = deque(FeedItem(p, p, "t.x", "room/1", "u") for p in range(1, 8))
    first, cur = page(feed, limit=3)
    second, cur2 = page(feed, before=cur, limit=3)
    third, cur3 = page(feed, before=cur2, limit=3)
    assert [i.position for i in first + second + third] == [7, 6, 5, 4, 3, 2, 1] and cur3 is None


async def test_prune_job_snapshots_documents_then_prunes_their_updates():
    import pycrdt as y

    from syncline.store.maintenance import prune_job

    now = [1_700_000_000_000_000]
    store = await open_store("memory://", clock_us=lambda: now[0])
    doc = y.Doc()
    text = doc.get("text", type=y.Text)
    for word in ["one ", "two ", "three "]:
        before = doc.get_state()
        text.insert(len(str(text)), word)
        await store.append("acme", "doc/notes", [NewEvent("crdt.update", doc.get_update(before))])
    assert await store.list_streams("acme", prefix="doc/") == [("doc/notes", 3)]
    now[0] += 8 * 86_400_000_000
    report = await prune_job(store, retention_s=7 * 86400)
    assert report.events_deleted == 3
    assert await store.read_stream("acme", "doc/notes") == []
    assert (await load_document(store, "acme", "doc/notes")).text() == "one two three "
    assert (await store.verify()).ok
    await store.close()
