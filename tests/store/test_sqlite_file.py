"""The SQLite file: its page size, and stream heads kept right by the writer.

New files get ``store.sqlite.PAGE_SIZE`` pages; a file made before keeps its own
and works the same. The writer updates existing streams' heads in place and inserts
new ones: a second store on the same file (as another process would) must see every
head the first one moved, or its expected-version checks would be wrong."""
from __future__ import annotations

import sqlite3

import pytest

from syncline.engine.errors import ConcurrencyError
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.sqlite import PAGE_SIZE


def _page_size(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()


async def test_a_new_file_gets_the_smaller_pages(sqlite_url):
    store = await open_store(sqlite_url)
    await store.append("acme", "t/1", [NewEvent("x.Happened", {"i": 1})])
    await store.close()
    assert PAGE_SIZE != 4096 and _page_size(sqlite_url.split("///", 1)[1]) == PAGE_SIZE


async def test_a_file_made_with_other_pages_keeps_them_and_works(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=4096")
    db.execute("CREATE TABLE _made_before (a)")
    db.commit()
    db.close()
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    await store.append("acme", "t/1", [NewEvent("x.Happened", {"i": i}) for i in range(3)])
    assert [e.version for e in await store.read_stream("acme", "t/1")] == [1, 2, 3]
    await store.close()
    assert _page_size(str(path)) == 4096


async def test_a_second_writer_on_the_file_sees_every_head_the_first_moved(sqlite_url):
    a = await open_store(sqlite_url)
    b = await open_store(sqlite_url)
    try:
        streams = [f"t/{i}" for i in range(5)]
        for rnd in range(4):
            writer, other = (a, b) if rnd % 2 == 0 else (b, a)
            for s in streams:  # existing streams after the first round: updated in place
                await writer.append("acme", s, [NewEvent("x.Happened", {"r": rnd})], expected_version=rnd)
            await writer.append("acme", f"new/{rnd}", [NewEvent("x.Happened", {})], expected_version=0)
            with pytest.raises(ConcurrencyError):  # the other writer knows the head moved
                await other.append("acme", streams[0], [NewEvent("x.Happened", {})], expected_version=rnd)
        versions = await a.stream_versions("acme", [*streams, "new/0", "new/3"])
        assert versions == {**{s: 4 for s in streams}, "new/0": 1, "new/3": 1}
        assert (await b.verify("acme")).ok
    finally:
        await a.close()
        await b.close()
