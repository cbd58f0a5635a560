"""brings_news: "does this update change the document?" answered from the update's own
structs and delete set, against the document's state vector and an incrementally kept
delete-set index (engine.ynews), never by re-reading the document.

The property: for random documents (replicas typing, deleting and replacing
concurrently, on several clients, non-ASCII text), any part of their updates applied in
any order (with duplicates, so some wait for others), and any candidate update (a
keystroke, a merge of several, a sync diff), ``brings_news`` equals "applying it to a
copy changes what the document holds" (struct ids, integrated or waiting, and deleted
ids). Both ways of applying (trusting and checked) are covered.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text, merge_updates
from yjs_gen import concurrent_updates, edit, state_of

from syncline.engine.documents import Document, PendingLimits
from syncline.engine.ynews import DeleteSetIndex
from syncline.engine.yparse import client_key
from syncline.engine.yupdates import InvalidUpdate


def _replay(updates: list[bytes], limits: PendingLimits | None) -> Document:
    doc = Document(limits=limits)
    for u in updates:
        doc.apply_update(u)
    return doc


def _changes(applied: list[bytes], update: bytes, limits: PendingLimits | None) -> bool:
    before = _replay(applied, limits)
    after = _replay(applied, limits)
    after.apply_update(update)
    return state_of(before) != state_of(after)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    steps=st.integers(1, 40),
    clients=st.integers(1, 3),
    checked=st.booleans(),
)
def test_brings_news_is_exactly_whether_applying_changes_the_state(seed, steps, clients, checked):
    rnd = random.Random(seed)
    updates = concurrent_updates(rnd, steps, clients)
    limits = PendingLimits() if checked else None
    # Some of them, in any order, some twice: some wait for ones not applied.
    applied = rnd.sample(updates, k=rnd.randint(0, len(updates)))
    applied += rnd.sample(applied, k=len(applied) // 4)
    rnd.shuffle(applied)
    doc = _replay(applied, limits)
    candidates = list(updates)
    if len(updates) > 1:
        candidates.append(merge_updates(*rnd.sample(updates, k=rnd.randint(2, len(updates)))))
    full = Document()
    for u in updates:
        full.apply_update(u)
    candidates.append(full.diff(doc.state_vector()))  # what a peer sends in sync step 2
    candidates.append(full.encode_state())
    for u in rnd.sample(candidates, k=min(len(candidates), 8)):
        assert doc.brings_news(u) == _changes(applied, u, limits), u.hex()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 60))
def test_the_answer_holds_while_the_document_is_fed_one_update_at_a_time(seed, steps):
    """The index follows every update applied (one document asked after each apply)."""
    rnd = random.Random(seed)
    updates = concurrent_updates(rnd, steps, 3)
    order = updates + rnd.sample(updates, k=len(updates) // 3)
    rnd.shuffle(order)
    for limits in (None, PendingLimits()):
        doc = Document(limits=limits)
        for i, u in enumerate(order):
            news = doc.brings_news(u)
            before = state_of(doc)
            doc.apply_update(u)
            assert news == (state_of(doc) != before), (i, u.hex())


def test_a_reader_resending_everything_brings_nothing():
    rnd = random.Random(7)
    updates = concurrent_updates(rnd, 300, 3)
    doc = _replay(updates, PendingLimits())
    assert not doc.brings_news(doc.encode_state())
    assert not doc.brings_news(merge_updates(*updates))
    assert all(not doc.brings_news(u) for u in updates)
    assert not doc.brings_news(b"\x00\x00")


def test_a_delete_of_something_already_deleted_is_no_news_and_a_new_one_is():
    src = Doc(client_id=5)
    text = src.get("text", type=Text)
    updates: list[bytes] = []
    src.observe(lambda e: updates.append(e.update))
    text.insert(0, "héllo wörld")
    doc = Document()
    doc.apply_update(updates[0])
    with src.transaction():
        edit(text, 1, 3, "")  # delete "éll"
    delete = updates[-1]
    assert doc.brings_news(delete)
    doc.apply_update(delete)
    assert not doc.brings_news(delete)
    with src.transaction():
        edit(text, 0, 1, "")  # another, adjacent
    assert doc.brings_news(updates[-1])
    doc.apply_update(updates[-1])
    # A peer's sync step 2 carries its whole delete set: nothing new now.
    assert not doc.brings_news(src.get_update(doc.state_vector()))


def test_a_delete_of_ids_not_there_yet_is_news_once():
    src = Doc(client_id=9)
    text = src.get("text", type=Text)
    updates: list[bytes] = []
    src.observe(lambda e: updates.append(e.update))
    text.insert(0, "abc")
    with src.transaction():
        edit(text, 1, 1, "")
    insert, delete = updates
    doc = Document(limits=PendingLimits())
    assert doc.brings_news(delete)
    doc.apply_update(delete)  # waits for the ids it deletes
    assert doc.pending
    assert not doc.brings_news(delete)
    assert doc.brings_news(insert)
    doc.apply_update(insert)
    assert not doc.pending and doc.text() == "ac"


@pytest.mark.parametrize("junk", [
    b"", b"\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x01\x01\x05\x00\x84",
    b"\x05\x00", b"\x00\x01\x05\x01\x00", b"\x00\x01\x05\x01\x00\x01\x00garbage",
])
def test_hostile_bytes_raise_only_invalid_update_or_are_news(junk):
    for limits in (None, PendingLimits()):
        doc = Document(limits=limits)
        doc.apply_update(concurrent_updates(random.Random(1), 5, 1)[0])
        try:
            assert doc.brings_news(junk) in (True, False)
        except InvalidUpdate:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**32))
def test_fuzzed_updates_raise_only_invalid_update(data, seed):
    """Random bytes and randomly mutated real updates: brings_news answers or raises
    InvalidUpdate, and so does apply_update, which leaves a usable document."""
    rnd = random.Random(seed)
    real = concurrent_updates(rnd, 6, 2)
    u = bytearray(rnd.choice(real))
    for _ in range(rnd.randint(1, 3)):
        u[rnd.randrange(len(u))] = rnd.randrange(256)
    for candidate in (data, bytes(u)):
        for limits in (None, PendingLimits()):
            doc = _replay(real[:3], limits)
            try:
                doc.brings_news(candidate)
            except InvalidUpdate:
                pass
            try:
                doc.apply_update(candidate)
            except InvalidUpdate:
                pass
            for r in real:
                doc.apply_update(r)
            doc.text()
            doc.encode_state()


def test_the_cost_of_an_answer_does_not_grow_with_the_deleted_ranges():
    """The parse work per check is the update's own delete set: the document's is read
    once (when the index is built), not again for each check, however many separate
    ranges it has (the gateway used to re-read it on a delete after a replace)."""
    def document_with_ranges(n: int) -> tuple[Document, Doc, Text, list[bytes]]:
        src = Doc(client_id=3)
        text = src.get("text", type=Text)
        updates: list[bytes] = []
        src.observe(lambda e: updates.append(e.update))
        text.insert(0, "ab" * n)
        for i in range(n):  # delete every other character: n separate ranges
            with src.transaction():
                edit(text, i + 1, 1, "")
        doc = Document(limits=PendingLimits())
        doc.apply_update(src.get_update())
        return doc, src, text, updates

    work = {}
    for n in (100, 1000, 5000):
        doc, src, text, updates = document_with_ranges(n)
        doc.brings_news(b"\x00\x00")  # builds the index: the one full read
        index = doc._dsi
        assert index is not None and len(index) == n
        built = index.ranges_added
        for k in range(20):  # replaces, then deletes after them: the old slow case
            with src.transaction():
                edit(text, k, 1, "q")
            assert doc.brings_news(updates[-1])
            doc.apply_update(updates[-1])
            with src.transaction():
                edit(text, k, 1, "")
            assert doc.brings_news(updates[-1])
            doc.apply_update(updates[-1])
        work[n] = index.ranges_added - built
    assert work[100] == work[1000] == work[5000] <= 40, work


def test_delete_set_index_merges_and_covers():
    index = DeleteSetIndex()
    c = client_key(7)
    for clock, length in [(10, 5), (30, 5), (15, 5), (0, 3), (3, 2), (50, 1), (20, 10), (45, 2)]:
        index.add(c, clock, length)
    assert index.ranges(c) == [(0, 5), (10, 25), (45, 2), (50, 1)]
    assert index.covers(c, 10, 25) and index.covers(c, 12, 3) and index.covers(c, 0, 5)
    assert not index.covers(c, 4, 2) and not index.covers(c, 44, 1) and not index.covers(c, 47, 1)
    assert not index.covers(client_key(8), 0, 1)
    index.add(c, 0, 60)
    assert index.ranges(c) == [(0, 60)]
