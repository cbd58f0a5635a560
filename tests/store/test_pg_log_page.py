"""PostgreSQL log pages read the page and the log head in one query (store/read_queries.py
``with_head``): one round trip per page, and a page never runs past what its snapshot
saw, so a reader paging while appends commit sees every event once, in order."""
from __future__ import annotations

import asyncio

import asyncpg

from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.filters import EventFilter
from syncline.store import open_store


async def test_a_page_and_its_head_cost_one_query(pg_clean_url, monkeypatch):
    store = await open_store(pg_clean_url)
    try:
        await store.append_many("acme", [StreamWrite(f"s/{n}", (NewEvent("a.b", {"n": n}),)) for n in range(30)])
        calls: list[str] = []
        for name in ("fetch", "fetchval", "fetchrow"):
            orig = getattr(asyncpg.Connection, name)

            def counting(self, query, *args, _orig=orig, **kw):
                calls.append(query)
                return _orig(self, query, *args, **kw)

            monkeypatch.setattr(asyncpg.Connection, name, counting)
        page = await store.read_log("acme", after=0, limit=10, partitions=(4, (0, 1)))
        assert len([q for q in calls if "events" in q or "log_head" in q]) == 1
        assert page.head == 30 and page.events and all(ev.position <= 30 for ev in page.events)
        calls.clear()
        empty = await store.read_log("acme", after=0, filter=EventFilter(types=("nothing.*",)))
        assert len([q for q in calls if "events" in q or "log_head" in q]) == 1
        assert empty.events == () and empty.next_after == 30 and empty.head == 30  # the head, from the one query
    finally:
        await store.close()


async def test_paging_while_appends_commit_sees_every_event_once_in_order(pg_clean_url):
    writer = await open_store(pg_clean_url)
    reader = await open_store(pg_clean_url)
    total = 1500
    try:
        async def append() -> None:
            for b in range(0, total, 50):
                writes: dict[str, list[NewEvent]] = {}
                for n in range(b, b + 50):
                    writes.setdefault(f"s/{n % 13}", []).append(NewEvent("a.b", {"n": n}))
                await writer.append_many("acme", [StreamWrite(s, tuple(evs)) for s, evs in writes.items()])

        task = asyncio.create_task(append())
        seen: list[int] = []
        cursors = {p: 0 for p in range(2)}  # two readers, one partition of 2 each
        last = dict(cursors)
        while True:
            for part in cursors:
                page = await reader.read_log("acme", after=cursors[part], limit=37, partitions=(2, (part,)))
                assert page.next_after <= page.head
                for ev in page.events:
                    assert ev.position > last[part]  # in log order within what a reader is given
                    last[part] = ev.position
                    seen.append(ev.data["n"])
                cursors[part] = page.next_after
            if task.done() and all(c >= total for c in cursors.values()):
                break
            await asyncio.sleep(0)
        await task
        assert sorted(seen) == list(range(total))  # each once: nothing skipped past a head, nothing twice
    finally:
        await writer.close()
        await reader.close()


async def test_a_page_read_on_a_connection_the_server_dropped_is_read_again(pg_clean_url):
    # Page reads use a pool without the pre-ping (store/postgres.py create_page_engine): a
    # pooled connection whose backend is gone fails, is dropped, and the page is read again.
    store = await open_store(pg_clean_url)
    try:
        await store.append("acme", "s/1", [NewEvent("a.b", {"n": 1})])
        assert len((await store.read_log("acme")).events) == 1  # its connection now waits in the pool
        async with store._pages.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            pid = raw.get_server_pid()
        admin = await asyncpg.connect(pg_clean_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await store.append("acme", "s/1", [NewEvent("a.b", {"n": 2})])
        page = await store.read_log("acme")
        assert [ev.data["n"] for ev in page.events] == [1, 2]
        assert [ev.data["n"] for ev in await store.read_stream("acme", "s/1")] == [1, 2]
    finally:
        await store.close()
