"""Documents: convergence, snapshots, diffs, the cache, the fold and time travel."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from syncline.engine.doc_history import DocsState, apply_doc_event, document_at, document_at_time
from syncline.engine.doccache import DocumentCache
from syncline.engine.documents import (
    CRDT_UPDATE,
    DocSnapshot,
    Document,
    SnapshotCorrupt,
    SnapshotPolicy,
    compact,
)
from syncline.engine.events import NO_ACTOR, RecordedEvent, Retention
from syncline.engine.yupdates import InvalidUpdate


def _event(
    position: int, data, *, stream: str = "doc/a", type_: str = CRDT_UPDATE, tenant: str = "t1",
    version: int | None = None,
) -> RecordedEvent:
    return RecordedEvent(
        id=f"e{position}", tenant=tenant, stream=stream, version=version or position,
        position=position, type=type_, schema=1, time_us=1_000 * position, actor=NO_ACTOR,
        clock={}, data=data, meta={}, retention=Retention.STANDARD,
    )


# -- replicas editing concurrently ------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("ins"), st.integers(0, 1000), st.text(alphabet="abcxyz", min_size=1, max_size=4)),
    st.tuples(st.just("del"), st.integers(0, 1000), st.integers(1, 3)),
    st.tuples(st.just("set"), st.sampled_from("kqz"), st.integers(0, 9)),
    st.tuples(st.just("push"), st.integers(0, 9), st.none()),
    st.tuples(st.just("sync"), st.integers(0, 10), st.none()),
)


def _edit(replicas: list[Doc], script: list[tuple[int, tuple]]) -> list[bytes]:
    updates: list[bytes] = []
    for doc in replicas:
        doc.observe(lambda event: updates.append(event.update))
    for who, (kind, a, b) in script:
        doc = replicas[who % len(replicas)]
        text = doc.get("text", type=Text)
        if kind == "ins":
            text.insert(a % (len(text) + 1), b)
        elif kind == "del" and len(text):
            start = a % len(text)
            del text[start : min(len(text), start + b)]
        elif kind == "set":
            doc.get("map", type=Map)[a] = b
        elif kind == "push":
            doc.get("array", type=Array).append(a)
        elif kind == "sync":
            doc.apply_update(replicas[a % len(replicas)].get_update(doc.get_state()))
    return updates


def _view(doc: Document) -> tuple:
    return doc.text(), doc.map("map"), doc.array("array")


_scripts = st.lists(st.tuples(st.integers(0, 2), _op), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_scripts, st.randoms(use_true_random=False))
def test_updates_in_any_order_or_merged_give_the_same_document(script, rnd: random.Random) -> None:
    replicas = [Doc() for _ in range(3)]
    updates = _edit(replicas, script)
    in_order = Document()
    for u in updates:
        in_order.apply_update(u)

    shuffled = Document()
    mixed = updates + rnd.sample(updates, k=len(updates) // 3)  # with duplicates
    rnd.shuffle(mixed)
    for u in mixed:
        shuffled.apply_update(u)

    merged = Document()
    merged.apply_update(compact(updates))

    expected = _view(in_order)
    assert _view(shuffled) == expected
    assert _view(merged) == expected
    # Every replica that has seen everything agrees too.
    for r in replicas:
        r.apply_update(compact(updates))
        assert str(r.get("text", type=Text)) == expected[0]


@settings(max_examples=60, deadline=None)
@given(_scripts, st.integers(0, 100))
def test_snapshot_plus_tail_equals_full_replay(script, cut: int) -> None:
    updates = _edit([Doc(), Doc()], script)
    events = [_event(i + 1, u) for i, u in enumerate(updates)]
    cut = cut % (len(events) + 1)

    head = Document.load(None, events[:cut])
    snap = head.snapshot()
    assert snap.position == cut
    from_snapshot = Document.load(snap, events)  # overlapping tail: covered ones skipped
    full = Document.load(None, events)
    assert _view(from_snapshot) == _view(full)
    assert from_snapshot.position == full.position == len(events)
    assert from_snapshot.tail_events == len(events) - cut


def test_snapshot_checksum_is_verified() -> None:
    doc = Document()
    doc.apply_update(_text_update("hello"), position=3)
    snap = doc.snapshot()
    assert DocSnapshot.of(snap.state, position=3) == DocSnapshot(3, snap.state, snap.checksum)
    bad = DocSnapshot(snap.position, snap.state[:-1] + b"\x01", snap.checksum)
    with pytest.raises(SnapshotCorrupt) as info:
        Document.load(bad, [])
    assert info.value.code == "snapshot_corrupt"


def _text_update(content: str) -> bytes:
    d = Doc()
    d.get("text", type=Text).insert(0, content)
    return d.get_update()


def test_diff_against_remote_state_vector() -> None:
    server = Document()
    client = Doc()
    client.get("text", type=Text).insert(0, "client ")
    server.apply_update(_text_update("server"))
    client.apply_update(server.diff(client.get_state()))
    server.apply_update(client.get_update(server.state_vector()))
    assert str(client.get("text", type=Text)) == server.text()
    # Nothing missing → an empty diff.
    assert Document.load(None, [(1, server.diff(client.get_state()))]).text() == ""
    assert server.diff(None) == server.encode_state()


def test_invalid_update_leaves_document_unchanged() -> None:
    doc = Document()
    doc.apply_update(_text_update("ok"), position=1)
    with pytest.raises(InvalidUpdate):
        doc.apply_update(b"\x01\x02\x03", position=2)
    with pytest.raises(InvalidUpdate):
        doc.apply_update("not bytes", position=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidUpdate):
        doc.diff(b"\x05\x01")
    assert doc.text() == "ok" and doc.position == 1


def test_snapshot_policy() -> None:
    policy = SnapshotPolicy(tail_events_max=3, tail_bytes_max=10_000)
    doc = Document()
    for i in range(2):
        doc.apply_update(_text_update("x"), position=i + 1)
    assert not policy.due(doc)
    doc.apply_update(_text_update("y"), position=3)
    assert policy.due(doc)
    doc.snapshot()
    assert not policy.due(doc)
    doc.apply_update(_text_update("z" * 20_000), position=4)
    assert policy.due(doc)


# -- cache ------------------------------------------------------------------------


def _doc_of_size(n: int) -> Document:
    doc = Document()
    doc.apply_update(_text_update("x" * n))
    return doc


def test_cache_evicts_least_recently_used_over_budget() -> None:
    a, b, c = _doc_of_size(10), _doc_of_size(10), _doc_of_size(10)
    # Sizes differ by a byte or so (random Yjs client ids have varint lengths): any two fit, three don't.
    sizes = sorted(d.approx_bytes for d in (a, b, c))
    cache: DocumentCache[str] = DocumentCache(memory_budget_bytes=sizes[1] + sizes[2])
    assert cache.put("a", a, now_ms=1) == []
    assert cache.put("b", b, now_ms=2) == []
    assert cache.get("a", now_ms=3) is a  # b is now the least recently used
    evicted = cache.put("c", c, now_ms=4)
    assert evicted == [("b", b)]
    assert cache.keys() == ["a", "c"] and cache.memory_bytes == a.approx_bytes + c.approx_bytes


def test_cache_idle_unload_and_pins() -> None:
    cache: DocumentCache[str] = DocumentCache(idle_after_ms=1000)
    a, b = _doc_of_size(1), _doc_of_size(1)
    cache.put("a", a, now_ms=0)
    cache.put("b", b, now_ms=0)
    cache.pin("b")
    assert cache.sweep(now_ms=999) == []
    cache.get("a", now_ms=500)
    assert cache.sweep(now_ms=1000) == []  # a was used at 500, b is pinned
    assert cache.sweep(now_ms=1500) == [("a", a)]
    cache.unpin("b")
    assert cache.sweep(now_ms=1500) == [("b", b)]
    assert len(cache) == 0 and cache.memory_bytes == 0


def test_cache_tracks_growth_on_touch() -> None:
    doc = _doc_of_size(1)
    other = _doc_of_size(1)
    cache: DocumentCache[str] = DocumentCache(memory_budget_bytes=doc.approx_bytes * 2 + 100)
    cache.put("other", other, now_ms=0)
    cache.put("doc", doc, now_ms=0)
    doc.apply_update(_text_update("y" * 1000))
    assert cache.touch("doc", now_ms=1) == [("other", other)]  # growth pushed it over
    assert cache.memory_bytes == doc.approx_bytes


@given(st.lists(
    st.tuples(st.sampled_from(["put", "get", "pin", "unpin", "sweep"]), st.integers(0, 5), st.integers(1, 300)),
    max_size=60,
))
def test_cache_invariants(ops) -> None:
    budget = 3 * _doc_of_size(100).approx_bytes
    cache: DocumentCache[int] = DocumentCache(idle_after_ms=50, memory_budget_bytes=budget)
    now = 0
    kept = None  # the last document put: the one a caller needs, never evicted for the budget
    for kind, key, n in ops:
        now += 7
        if kind == "put":
            cache.put(key, _doc_of_size(n), now_ms=now)
            kept = key
        elif kind == "get":
            cache.get(key, now_ms=now)
        elif kind == "pin" and key in cache:
            cache.pin(key)
        elif kind == "unpin":
            cache.unpin(key)
        else:
            cache.sweep(now_ms=now)
        docs = [cache.peek(k) for k in cache.keys()]
        assert cache.memory_bytes == sum(d.approx_bytes for d in docs)
        pinned = sum(d.approx_bytes for k, d in zip(cache.keys(), docs) if cache._slots[k].pins)
        kept_size = cache.peek(kept).approx_bytes if kept in cache and not cache._slots[kept].pins else 0
        # Over budget only because of pinned documents or the one last put (get() never
        # evicts: it has no way to hand evicted documents back for snapshotting).
        assert cache.memory_bytes <= max(budget, pinned + kept_size)


# -- fold and time travel ------------------------------------------------------------


def _history(n: int, seed: int) -> list[RecordedEvent]:
    rnd = random.Random(seed)
    replicas = [Doc(), Doc()]
    script = [(rnd.randrange(2), ("ins", rnd.randrange(100), rnd.choice("abc"))) for _ in range(n)]
    updates = _edit(replicas, script)
    return [_event(i + 1, u) for i, u in enumerate(updates)]


def test_fold_ignores_other_streams_and_old_positions() -> None:
    state = DocsState()
    events = [
        _event(1, _text_update("a"), stream="doc/x"),
        _event(2, {"f": 1}, stream="rec/c/1", type_="record.patched"),
        _event(3, _text_update("b"), stream="doc/y", tenant="t2"),
    ]
    for e in events + events[:2]:  # a replay overlapping the live feed
        state = apply_doc_event(state, e)
    assert state.position == 3
    assert state.get("t1", "doc/x").text() == "a"
    assert state.get("t2", "doc/y").text() == "b"
    assert state.get("t1", "doc/x").tail_events == 1


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000), st.data())
def test_time_travel_equals_live_state_at_position(n: int, seed: int, data) -> None:
    events = _history(n, seed)
    live_texts = {0: ""}
    state = DocsState()
    snapshots = []
    for e in events:
        state = apply_doc_event(state, e)
        live_texts[e.position] = state.get("t1", "doc/a").text()
        if e.position % 7 == 0:
            snapshots.append(state.get("t1", "doc/a").snapshot())
    p = data.draw(st.integers(0, len(events)))
    assert document_at(p, snapshots, events).text() == live_texts[p]
    # Commit time of event k is 1000*k µs (see _event).
    assert document_at_time(1_000 * p + 999, snapshots, events).text() == live_texts[p]


def test_out_of_order_updates_are_not_lost() -> None:
    # Regression: yrs alone drops keystroke 3 when applied as 0, 2, 3, 1.
    source = Doc()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    text, array = source.get("text", type=Text), source.get("array", type=Array)
    text.insert(0, "a")
    array.append(0)
    text.insert(0, "b")
    array.append(1)
    doc = Document()
    for i in (0, 2, 3):
        doc.apply_update(updates[i])
    assert doc.pending
    # A snapshot taken while waiting keeps the waiting updates.
    early = Document.load(doc.snapshot(), [])
    doc.apply_update(updates[1])
    early.apply_update(updates[1])
    assert not doc.pending and not early.pending
    assert _view(doc) == _view(early) == ("ba", {}, [0.0, 1.0])
