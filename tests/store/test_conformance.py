"""The event store contract (docs/design.md, "The event log"), run against every adapter."""
from __future__ import annotations

import asyncio

import pytest
from store_helpers import raw_sql

from syncline.engine.errors import (
    ConcurrencyError,
    IdempotencyMismatch,
    InvalidEventType,
    InvalidStreamName,
    InvalidTenant,
    PayloadTooLarge,
    UnencodablePayload,
    UnknownTenant,
    ValidationError,
)
from syncline.engine.events import Actor, NewEvent, Retention, StreamWrite
from syncline.engine.filters import EventFilter, Predicate
from syncline.engine.upcasting import UpcasterRegistry
from syncline.store import open_store


def ev(type_="thing.happened", data=None, **kw) -> NewEvent:
    return NewEvent(type_, data if data is not None else {"n": 1}, **kw)


async def all_events(store, tenant):
    page = await store.read_log(tenant, after=0, limit=10_000)
    return list(page.events)


async def test_append_assigns_versions_positions_and_round_trips(store):
    r1 = await store.append("acme", "order/1", [ev(data={"a": 1}), ev(data=b"\x00raw")], expected_version=0)
    r2 = await store.append("acme", "order/2", [ev("order.placed", {"total": 10}, actor=Actor("alice", "c1"))])
    assert [(s.first_version, s.last_version) for s in r1.streams] == [(1, 2)]
    assert (r1.first_position, r1.last_position, r2.first_position) == (1, 2, 3)
    got = await store.read_stream("acme", "order/1")
    assert [(e.version, e.position, e.data) for e in got] == [(1, 1, {"a": 1}), (2, 2, b"\x00raw")]
    assert [e.id for e in got] == list(r1.event_ids)
    e2 = (await store.read_stream("acme", "order/2"))[0]
    assert e2.actor == Actor("alice", "c1") and e2.type == "order.placed" and e2.tenant == "acme"
    assert e2.time_us >= got[-1].time_us
    assert await store.stream_version("acme", "order/1") == 2
    assert await store.stream_version("acme", "order/404") == 0
    assert await store.head_position() == 3
    assert (await store.read_stream("acme", "order/1", from_version=2))[0].version == 2


async def test_version_conflict_is_typed_and_writes_nothing(store):
    await store.append("acme", "order/1", [ev()])
    with pytest.raises(ConcurrencyError) as info:
        await store.append("acme", "order/1", [ev(), ev()], expected_version=0)
    assert info.value.code == "version_conflict" and info.value.actual == 1
    assert await store.stream_version("acme", "order/1") == 1
    assert await store.head_position() == 1
    ok = await store.append("acme", "order/1", [ev()], expected_version=1)
    assert ok.last_position == 2  # no gap left by the failed call


async def test_multi_stream_append_is_atomic(store):
    await store.append("acme", "acct/b", [ev()])
    with pytest.raises(ConcurrencyError):
        await store.append_many(
            "acme",
            [StreamWrite("acct/a", (ev(),), 0), StreamWrite("acct/b", (ev(),), 0)],
        )
    assert await store.stream_version("acme", "acct/a") == 0
    r = await store.append_many(
        "acme", [StreamWrite("acct/a", (ev(), ev()), 0), StreamWrite("acct/b", (ev(),), 1)]
    )
    assert [(s.stream, s.first_position, s.last_position) for s in r.streams] == [
        ("acct/a", 2, 3), ("acct/b", 4, 4)
    ]


async def test_idempotency_key_returns_original_and_writes_once(store):
    first = await store.append("acme", "order/9", [ev(data={"x": 1})], idempotency_key="k-1")
    again = await store.append("acme", "order/9", [ev(data={"x": 1})], idempotency_key="k-1")
    assert again.duplicate and not first.duplicate
    assert again.event_ids == first.event_ids and again.streams == first.streams
    assert await store.stream_version("acme", "order/9") == 1
    with pytest.raises(IdempotencyMismatch):
        await store.append("acme", "order/9", [ev(data={"x": 2})], idempotency_key="k-1")
    # keys are per tenant
    other = await store.append("globex", "order/9", [ev(data={"x": 1})], idempotency_key="k-1")
    assert not other.duplicate


async def test_concurrent_appends_one_conflict_does_not_fail_the_others(store):
    await store.append("acme", "s/conflicted", [ev()])
    calls = [store.append("acme", f"s/{i}", [ev(data={"i": i})], expected_version=0) for i in range(40)]
    calls.append(store.append("acme", "s/conflicted", [ev()], expected_version=0))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[-1], ConcurrencyError)
    assert all(not isinstance(r, Exception) for r in results[:-1])
    positions = sorted(r.last_position for r in results[:-1])
    assert positions == list(range(2, 42))  # gapless, each call its own position


async def test_caller_chosen_duplicate_event_id_fails_only_that_call(store):
    await store.append("acme", "s/a", [ev(id="0190f000-0000-7000-8000-000000000001")])
    results = await asyncio.gather(
        store.append("acme", "s/b", [ev()]),
        store.append("acme", "s/c", [ev(id="0190f000-0000-7000-8000-000000000001")]),
        store.append("acme", "s/d", [ev()]),
        return_exceptions=True,
    )
    if store.dialect == "memory":  # the memory store does not index ids; it is a fake
        return
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert isinstance(results[1], Exception)
    assert await store.stream_version("acme", "s/c") == 0


async def test_positions_strictly_increase_under_concurrency(store):
    async def writer(k):
        for i in range(25):
            await store.append("acme", f"w/{k}", [ev(data={"i": i})])

    await asyncio.gather(*(writer(k) for k in range(8)))
    events = await all_events(store, "acme")
    assert [e.position for e in events] == list(range(1, 201))
    for k in range(8):
        assert [e.data["i"] for e in events if e.stream == f"w/{k}"] == list(range(25))


async def test_read_log_filters_and_paging(store):
    await store.append("acme", "order/1", [ev("order.placed", {"country": "NL"})])
    await store.append("acme", "doc/1", [ev("crdt.update", b"u1")])
    await store.append("acme", "order/2", [ev("order.shipped", {"country": "DE"})])
    await store.append("acme", "order_x/3", [ev("order.placed", {"country": "FR"})])
    await store.append("acme", "room/1", [ev("presence.joined", {"user": "a"})])

    async def collect(f, limit=2):
        out, after = [], 0
        while True:
            page = await store.read_log("acme", after=after, limit=limit, filter=f)
            out += page.events
            if page.next_after == after:
                break
            after = page.next_after
            if not page.events and after >= page.head:
                break
        return [e.stream for e in out], after

    streams, end = await collect(EventFilter(stream_prefixes=("order/",)))
    assert streams == ["order/1", "order/2"] and end == 5  # "_" is not a wildcard
    assert (await collect(EventFilter(types=("order.*",))))[0] == ["order/1", "order/2", "order_x/3"]
    assert (await collect(EventFilter(types=("order.pl?ced",))))[0] == ["order/1", "order_x/3"]
    assert (await collect(EventFilter(types=("ORDER.*",))))[0] == []  # case-sensitive
    f = EventFilter(types=("order.*",), where=(Predicate("country", "in", ["NL", "FR"]),))
    assert (await collect(f))[0] == ["order/1", "order_x/3"]
    assert (await collect(EventFilter(streams=("doc/1",))))[0] == ["doc/1"]
    # a filter that matches nothing still advances the cursor to the head
    page = await store.read_log("acme", after=0, filter=EventFilter(types=("nothing.here",)))
    assert page.events == () and page.next_after == page.head == 5


async def test_tenants_are_isolated(store):
    await store.append("acme", "order/1", [ev(data={"secret": "a"})])
    await store.append("globex", "order/1", [ev(data={"secret": "b"})])
    assert [e.data for e in await store.read_stream("globex", "order/1")] == [{"secret": "b"}]
    assert {e.tenant for e in await all_events(store, "globex")} == {"globex"}
    assert await store.stream_version("globex", "order/1") == 1
    with pytest.raises(ValidationError):
        await store.read_log(None)
    everything = await store.read_log(None, all_tenants=True)
    assert {e.tenant for e in everything.events} == {"acme", "globex"}
    with pytest.raises(InvalidTenant):
        await store.read_stream("../acme", "order/1")


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda s: s.append("acme", "Bad Stream", [ev()]), InvalidStreamName),
        # a trailing newline must not slip past the name patterns (``$`` alone would allow it)
        (lambda s: s.append("acme", "order/1\n", [ev()]), InvalidStreamName),
        (lambda s: s.append("acme", "order/1", [ev("order.placed\n")]), InvalidEventType),
        (lambda s: s.append("acme\n", "order/1", [ev()]), InvalidTenant),
        (lambda s: s.append("acme", "order/1", [ev("nodots")]), InvalidEventType),
        (lambda s: s.append("", "order/1", [ev()]), InvalidTenant),
        (lambda s: s.append("acme", "order/1", [ev(data={"x": object()})]), UnencodablePayload),
        (lambda s: s.append("acme", "order/1", [ev(data=b"x" * (1024 * 1024 + 1))]), PayloadTooLarge),
        (lambda s: s.append("acme", "order/1", []), ValidationError),
        (lambda s: s.append("acme", "order/1", [ev()], expected_version=-1), ValidationError),
    ],
)
async def test_bad_input_is_a_typed_error_and_writes_nothing(store, call, error):
    with pytest.raises(error) as info:
        await call(store)
    assert info.value.code and isinstance(info.value.to_dict()["message"], str)
    assert await store.head_position() == 0
    await store.append("acme", "order/1", [ev()])  # the store keeps serving


async def test_tail_wakes_on_append_and_resumes(store):
    await store.append("acme", "feed/1", [ev(data={"i": 0})])
    seen = []

    async def consume():
        async for page in store.tail("acme", after=0, batch=3):
            seen.extend(e.data["i"] for e in page.events)
            if len(seen) >= 6:
                return page.next_after

    task = asyncio.create_task(consume())
    for i in range(1, 6):
        await store.append("acme", "feed/1", [ev(data={"i": i})])
        await store.append("globex", "feed/1", [ev(data={"i": 100 + i})])
    cursor = await asyncio.wait_for(task, 10)
    assert seen == list(range(6))
    assert cursor >= 10


async def test_verify_detects_edit_delete_and_reorder(store, store_url):
    for i in range(3):
        await store.append("acme", "ledger/1", [ev(data={"i": i})])
    await store.append("acme", "ledger/2", [ev()])
    report = await store.verify()
    assert report.ok and report.events_checked == 4 and report.streams_checked == 2
    with pytest.raises(UnknownTenant):
        await store.verify("nobody")
    if store.dialect == "memory":
        row = store._stream_rows[("acme", "ledger/1")][1]
        row["payload"] = b"\x81\xa1i\x63"
    else:
        await raw_sql(store, store_url, "UPDATE events SET payload = $1 WHERE stream = 'ledger/1' AND version = 2",
                      b"\x81\xa1i\x63")
    report = await store.verify("acme")
    assert [(b.stream, b.version, b.reason) for b in report.breaks] == [("ledger/1", 2, "hash_mismatch")]
    if store.dialect != "memory":
        await raw_sql(store, store_url, "DELETE FROM events WHERE stream = 'ledger/2'")
        reasons = {b.reason for b in (await store.verify("acme", "ledger/2")).breaks}
        assert reasons == {"head_mismatch"}
        # swap two positions inside a stream
        await raw_sql(store, store_url, "UPDATE events SET position = 1000 WHERE stream = 'ledger/1' AND version = 1")
        await raw_sql(store, store_url, "UPDATE events SET position = 1 WHERE stream = 'ledger/1' AND version = 3")
        await raw_sql(store, store_url, "UPDATE events SET position = 3 WHERE position = 1000")
        reasons = {b.reason for b in (await store.verify("acme", "ledger/1")).breaks}
        assert {"hash_mismatch", "out_of_order"} <= reasons


@pytest.fixture
async def clocked_store(store_url):
    now = [1_700_000_000_000_000]
    s = await open_store(store_url, clock_us=lambda: now[0])
    yield s, now
    await s.close()


async def _prune_scenario(s, now):
    day = 86_400_000_000
    await s.append("acme", "feed/1", [ev(data={"i": i}) for i in range(3)])
    await s.append("acme", "order/1", [ev("order.placed", retention=Retention.CRITICAL)])
    await s.append("acme", "mixed/1", [ev(), ev(retention=Retention.CRITICAL), ev()])
    now[0] += 8 * day
    await s.append("acme", "feed/1", [ev(data={"i": 3})])
    head_before = await s.head_position()
    await s.save_checkpoint("billing", "acme", 2)
    report = await s.prune(retention_s=7 * 86400)
    assert report.events_deleted == 2 and report.held_back_by_checkpoint >= 1
    assert [e.version for e in await s.read_stream("acme", "feed/1")] == [3, 4]
    await s.save_checkpoint("billing", "acme", head_before)
    report = await s.prune(retention_s=7 * 86400)
    assert [e.version for e in await s.read_stream("acme", "feed/1")] == [4]
    assert len(await s.read_stream("acme", "order/1")) == 1  # critical: kept forever
    assert [e.version for e in await s.read_stream("acme", "mixed/1")] == [2, 3]  # prefix only
    assert (await s.verify()).ok
    r = await s.append("acme", "feed/1", [ev()])
    assert r.first_position == head_before + 1  # positions never reused
    assert r.streams[0].first_version == 5
    with pytest.raises(UnknownTenant):
        await s.prune(tenant="nobody")


async def test_prune_keeps_document_updates_until_a_snapshot_covers_them(clocked_store):
    s, now = clocked_store
    day = 86_400_000_000
    r = await s.append("acme", "doc/paper", [ev("crdt.update", b"u%d" % i) for i in range(4)])
    now[0] += 8 * day
    assert (await s.prune(retention_s=7 * 86400)).events_deleted == 0
    await s.save_snapshot("acme", "doc/paper", "ydoc", r.first_position + 2, b"state", "c")
    assert (await s.prune(retention_s=7 * 86400)).events_deleted == 3
    assert [e.version for e in await s.read_stream("acme", "doc/paper")] == [4]
    assert (await s.verify()).ok


async def test_prune(clocked_store):
    s, now = clocked_store
    await _prune_scenario(s, now)


async def test_commit_time_is_monotonic_and_position_at_time(clocked_store):
    s, now = clocked_store
    await s.append("acme", "t/1", [ev()])
    t1 = now[0]
    now[0] -= 5_000_000  # the wall clock jumps back
    await s.append("acme", "t/1", [ev()])
    now[0] = t1 + 10_000_000
    await s.append("acme", "t/1", [ev()])
    times = [e.time_us for e in await s.read_stream("acme", "t/1")]
    assert times == sorted(times)
    assert await s.position_at_time(t1) == 2
    assert await s.position_at_time(t1 - 1) == 0
    assert await s.position_at_time(now[0]) == 3


async def test_upcasters_lift_old_schemas_on_read(store_url):
    reg = UpcasterRegistry()

    @reg.register("user.renamed", 1)
    def v1_to_v2(d):
        return {"name": d["n"]}

    @reg.register("user.renamed", 2)
    def v2_to_v3(d):
        return {**d, "display": d["name"].title()}

    s = await open_store(store_url, upcasters=reg)
    try:
        await s.append("acme", "user/1", [NewEvent("user.renamed", {"n": "ada"}, schema=1)])
        await s.append("acme", "user/1", [NewEvent("user.renamed", {"name": "bob", "display": "B"}, schema=3)])
        got = await s.read_stream("acme", "user/1")
        assert [(e.schema, e.data) for e in got] == [
            (3, {"name": "ada", "display": "Ada"}),
            (3, {"name": "bob", "display": "B"}),
        ]
    finally:
        await s.close()


async def test_snapshots_and_checkpoints(store):
    await store.save_snapshot("acme", "doc/1", "ydoc", 5, b"state5", "c5")
    await store.save_snapshot("acme", "doc/1", "ydoc", 9, b"state9", "c9")
    assert await store.load_snapshot("acme", "doc/1", "ydoc") == (9, b"state9", "c9")
    assert await store.load_snapshot("acme", "doc/1", "ydoc", at_or_before=8) == (5, b"state5", "c5")
    assert await store.load_snapshot("acme", "doc/1", "ydoc", at_or_before=4) is None
    assert await store.load_snapshot("globex", "doc/1", "ydoc") is None
    assert await store.load_checkpoint("sub", "acme") is None
    await store.save_checkpoint("sub", "acme", 7)
    await store.save_checkpoint("sub", "acme", 9)
    assert await store.load_checkpoint("sub", "acme") == 9


async def test_the_store_and_its_doorbell_are_the_ports(store):
    from syncline.engine.ports import Doorbell, EventStore

    assert isinstance(store, EventStore)
    assert isinstance(store.doorbell, Doorbell)
    assert store.poll_interval_s > 0
