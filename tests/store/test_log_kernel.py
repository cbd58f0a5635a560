"""One log kernel (engine/logkernel.py), every log adapter: the simulator's sync logs
(store/memory_sync_log.MemorySyncLog, store/sqlite_sync_log.SqliteSyncLog) and the
event store (open_store on memory://, SQLite and PostgreSQL) run the same script of
appends and must agree on every outcome (written, duplicate, conflict, mismatch), on
positions, versions and event ids, and on every row hash (``log_hash``)."""
from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest

from syncline.engine.errors import ConcurrencyError, IdempotencyMismatch, PayloadTooLarge
from syncline.engine.events import Actor, NewEvent, Retention, StreamWrite
from syncline.engine.ids import uuid7
from syncline.engine.logkernel import log_digest
from syncline.store import open_store
from syncline.store.memory_sync_log import MemorySyncLog
from syncline.store.sqlite_sync_log import SqliteSyncLog

T0 = 1_700_000_000_000_000  # µs


def _ev(n: int, **kw: Any) -> NewEvent:
    return NewEvent(kw.pop("type", "t.happened"), {"n": n, "text": "é" * (n % 5), "b": bytes([n % 256])}, **kw)


def _with_ids(writes: list[StreamWrite], rng: random.Random, time_us: int) -> list[StreamWrite]:
    return [replace(w, events=tuple(replace(e, id=uuid7(time_us // 1000, rng.randbytes(10))) for e in w.events))
            for w in writes]


def W(stream: str, events: list[NewEvent], expected: int | None = None) -> StreamWrite:
    return StreamWrite(stream, tuple(events), expected)


@dataclass
class Step:
    tenant: str
    writes: list[StreamWrite]
    time_us: int
    key: str | None
    expect: str  # "ok" | "duplicate" | "conflict" | "mismatch"
    positions: tuple[int, ...] = ()  # for "ok" and "duplicate": the events' positions


_BIG = dict(actor=Actor("alice", "phone-1"), clock={"phone-1": 3}, meta={"trace": "x"}, retention=Retention.CRITICAL)

SCRIPT = [
    Step("acme", [W("order/1", [_ev(1)], 0)], T0 + 1_000, None, "ok", (1,)),
    Step("acme", [W("order/1", [_ev(2), _ev(3, **_BIG)], 1)], T0 + 2_000, "k1", "ok", (2, 3)),
    Step("acme", [W("order/1", [_ev(4)], 1)], T0 + 3_000, None, "conflict"),  # it is at 3
    Step("acme", [W("order/1", [_ev(2), _ev(3, **_BIG)], 1)], T0 + 4_000, "k1", "duplicate", (2, 3)),
    Step("acme", [W("order/1", [_ev(5)])], T0 + 5_000, "k1", "mismatch"),  # same key, other request
    Step("beta", [W("order/1", [_ev(6)], 0)], T0 + 500, "k1", "ok", (4,)),  # clock went back; keys per tenant
    Step("acme", [W("acct/a", [_ev(7)], 0), W("acct/b", [_ev(8)], 5)], T0 + 6_000, None, "conflict"),  # atomic
    Step("acme", [W("acct/a", [_ev(9, **_BIG)], 0), W("acct/b", [_ev(10), _ev(11)])], T0 + 7_000, "k2", "ok",
         (5, 6, 7)),
    Step("acme", [W("acct/a", [_ev(9, **_BIG)], 0), W("acct/b", [_ev(10), _ev(11)])], T0 + 8_000, "k2",
         "duplicate", (5, 6, 7)),
    Step("acme", [W("acct/b", [_ev(12)], 2)], T0 + 9_000, "k3", "ok", (8,)),
    Step("acme", [W("acct/b", [_ev(13)], 2)], T0 + 9_500, "k4", "conflict"),  # a conflict stores no key...
    Step("acme", [W("acct/b", [_ev(13)], 3)], T0 + 9_600, "k4", "ok", (9,)),  # ...so the key is still free
]


# ------------------------------------------------------------------ the targets


class SyncLogTarget:
    def __init__(self, log) -> None:
        self.log = log
        self._head_positions: list[int] = []

    async def append(self, s: Step, writes: list[StreamWrite]):
        return [(e.position, e.id, e.stream, e.version) for e in
                self.log.append(s.tenant, writes, s.time_us, idempotency_key=s.key)]

    async def head(self) -> int:
        return self.log.head()

    async def log_hash(self) -> str:
        return self.log.log_hash()

    async def close(self) -> None:
        self.log.close()


class StoreTarget:
    def __init__(self, store, rows) -> None:
        self.store = store
        self.now = 0
        self._rows = rows  # async () -> [(position, hash)]

    async def append(self, s: Step, writes: list[StreamWrite]):
        self.now = s.time_us
        r = await self.store.append_many(s.tenant, writes, idempotency_key=s.key)
        assert r.duplicate == (s.expect == "duplicate")
        got = []
        ids = iter(r.event_ids)
        for sa in r.streams:
            versions = range(sa.first_version, sa.last_version + 1)
            positions = range(sa.first_position, sa.last_position + 1)
            for v, p in zip(versions, positions):
                got.append((p, next(ids), sa.stream, v))
        return got

    async def head(self) -> int:
        return await self.store.head_position()

    async def log_hash(self) -> str:
        return log_digest(await self._rows())

    async def close(self) -> None:
        await self.store.close()


async def _open_store(url: str) -> StoreTarget:
    box: list[StoreTarget] = []
    store = await open_store(url, clock_us=lambda: box[0].now, poll_interval_s=0.2)
    if url.startswith("memory"):
        async def rows():
            return [(r["position"], r["hash"]) for r in store._rows]
    elif url.startswith("sqlite"):
        path = url.split("///", 1)[1]

        async def rows():
            db = sqlite3.connect(path)
            try:
                return db.execute("SELECT position, hash FROM events ORDER BY position").fetchall()
            finally:
                db.close()
    else:
        async def rows():
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                fetched = await conn.fetch("SELECT position, hash FROM events ORDER BY position")
                return [(r[0], bytes(r[1])) for r in fetched]
            finally:
                await conn.close()
    box.append(StoreTarget(store, rows))
    return box[0]


@pytest.fixture(params=["memory-sync-log", "sqlite-sync-log", "store-memory", "store-sqlite", "store-postgres"])
async def target(request, tmp_path):
    kind = request.param
    if kind == "memory-sync-log":
        t = SyncLogTarget(MemorySyncLog())
    elif kind == "sqlite-sync-log":
        t = SyncLogTarget(SqliteSyncLog(str(tmp_path / "sync.db")))
    elif kind == "store-memory":
        t = await _open_store("memory://")
    elif kind == "store-sqlite":
        t = await _open_store(request.getfixturevalue("sqlite_url"))
    else:
        t = await _open_store(request.getfixturevalue("pg_clean_url"))
    yield t
    await t.close()


async def _run_script(t) -> list:
    """Run SCRIPT (every event with a seeded id, so all adapters write the same rows);
    what each step did."""
    rng = random.Random(7)
    seen = []
    for i, s in enumerate(SCRIPT):
        writes = _with_ids(s.writes, rng, s.time_us)
        before = await t.head()
        if s.expect == "conflict":
            with pytest.raises(ConcurrencyError) as err:
                await t.append(s, writes)
            assert err.value.code == "version_conflict"
            seen.append((i, "conflict", err.value.stream, err.value.expected, err.value.actual))
        elif s.expect == "mismatch":
            with pytest.raises(IdempotencyMismatch) as err:
                await t.append(s, writes)
            assert err.value.code == "idempotency_key_reused"
            seen.append((i, "mismatch"))
        else:
            got = await t.append(s, writes)
            assert tuple(p for p, *_ in got) == s.positions, (i, got)
            if s.expect == "ok":  # the ids we chose; a duplicate answers with the first append's
                assert [e for _, e, *_ in got] == [e.id for w in writes for e in w.events]
            seen.append((i, s.expect, got))
        if s.expect != "ok":
            assert await t.head() == before, f"step {i} wrote something"
    return seen


async def test_every_adapter_agrees_on_outcomes_rows_and_hashes(target):
    seen = await _run_script(target)
    assert await target.head() == 9
    reference = SyncLogTarget(MemorySyncLog())
    assert seen == await _run_script(reference)
    assert await target.log_hash() == await reference.log_hash()


async def test_a_bad_event_fails_its_call_and_writes_nothing(target):
    await target.append(Step("acme", [], T0, None, "ok"), [W("a/1", [_ev(1)], 0)])
    big = NewEvent("t.big", {"blob": b"x" * (1024 * 1024 + 1)})
    with pytest.raises(PayloadTooLarge):
        await target.append(Step("acme", [], T0 + 1, None, "ok"), [W("a/1", [_ev(2)], 1), W("a/2", [big])])
    assert await target.head() == 1


# ------------------------------------------------------------------ the sync logs' own promises


def _seeded(seed: int):
    rng = random.Random(seed)
    calls = []

    def new_id(time_ms: int) -> str:
        calls.append(time_ms)
        return uuid7(time_ms, rng.randbytes(10))

    return new_id, calls


def _sync_logs(tmp_path):
    a_id, a_calls = _seeded(3)
    b_id, b_calls = _seeded(3)
    return (MemorySyncLog(a_id), a_calls), (SqliteSyncLog(str(tmp_path / "s.db"), b_id), b_calls)


def test_sync_logs_draw_ids_alike_from_a_seeded_source(tmp_path):
    """Events without ids get them from ``new_id(time_ms)``: one call per id, in event
    order, none for a conflict or a duplicate, so seeded runs are reproducible and
    both sync logs write the same log."""
    (mem, mem_calls), (sq, sq_calls) = _sync_logs(tmp_path)
    try:
        for s in SCRIPT:
            for log in (mem, sq):
                try:
                    log.append(s.tenant, s.writes, s.time_us, idempotency_key=s.key)
                except (ConcurrencyError, IdempotencyMismatch):
                    pass
        assert mem.log_hash() == sq.log_hash()
        assert [e.id for e in mem.replay()] == [e.id for e in sq.replay()]
        assert mem_calls == sq_calls
        assert len(mem_calls) == 9  # one per written event
        assert mem_calls[3] == (T0 + 2_000) // 1000  # beta's event: the log's time never goes back
        assert [e.time_us for e in mem.replay()] == [e.time_us for e in sq.replay()]
        for tenant in ("acme", "beta"):
            assert mem.read(tenant, 0, 100) == sq.read(tenant, 0, 100)
            assert mem.count_after(tenant, 2) == sq.count_after(tenant, 2)
    finally:
        mem.close()
        sq.close()


def test_a_repeated_key_returns_the_first_events(tmp_path):
    (mem, _), (sq, _) = _sync_logs(tmp_path)
    try:
        for log in (mem, sq):
            first = log.append("acme", [W("x/1", [_ev(1), _ev(2)], 0)], T0, idempotency_key="req-1")
            again = log.append("acme", [W("x/1", [_ev(1), _ev(2)], 0)], T0 + 10, idempotency_key="req-1")
            assert again == first and log.head() == 2
            with pytest.raises(ConcurrencyError):  # without the key it is a new request, and stale
                log.append("acme", [W("x/1", [_ev(1), _ev(2)], 0)], T0 + 20)
            other = log.append("other", [W("x/1", [_ev(1), _ev(2)], 0)], T0 + 30, idempotency_key="req-1")
            assert [e.position for e in other] == [3, 4]  # keys are per tenant
    finally:
        mem.close()
        sq.close()


async def test_the_store_opens_a_sqlite_sync_log_file_and_knows_its_keys(tmp_path):
    path = tmp_path / "sim.db"
    log = SqliteSyncLog(str(path))
    first = log.append("acme", [W("x/1", [_ev(1)], 0)], T0, idempotency_key="req-1")
    log.append("acme", [W("x/1", [_ev(2)], 1)], T0 + 1)
    log_hash = log.log_hash()
    log.close()
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    try:
        report = await store.verify()
        assert report.ok and report.events_checked == 2
        r = await store.append_many("acme", [W("x/1", [_ev(1)], 0)], idempotency_key="req-1")
        assert r.duplicate and r.first_position == first[0].position and r.event_ids == (first[0].id,)
        with pytest.raises(ConcurrencyError):
            await store.append("acme", "x/1", [_ev(3)], expected_version=1)
        await store.append("acme", "x/1", [_ev(3)], expected_version=2)
    finally:
        await store.close()
    log = SqliteSyncLog(str(path))
    try:
        assert log.head() == 3 and log.log_hash() != log_hash
        assert [e.version for e in log.read("acme", 0, 10)] == [1, 2, 3]
    finally:
        log.close()


def test_the_store_planner_is_the_kernel_with_the_stores_packer():
    from syncline.engine import logkernel
    from syncline.store.planning import plan_batch
    from syncline.store.rows import prepare

    def no_ids(time_us: int, n: int) -> list[str]:
        raise AssertionError("every event has its id")

    writes = [W("a/1", [_ev(1, id="e1"), _ev(2, id="e2", **_BIG)], 0), W("a/2", [_ev(3, id="e3")])]
    a = plan_batch([prepare("acme", writes, "k")], {}, {}, 0, T0)
    b = logkernel.plan_batch([logkernel.prepare("acme", writes, "k")], {}, {}, 0, T0, new_ids=no_ids)
    assert a.values == b.values and a.new_keys == b.new_keys and a.outcomes == b.outcomes
    fresh = plan_batch([prepare("acme", [W("a/3", [_ev(4), _ev(5)])], None)], {}, {}, 0, T0)
    assert len({r["id"] for r in fresh.rows}) == 2  # the store's own ids: fresh UUIDv7s
