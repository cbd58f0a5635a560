"""A hypothesis state machine: the store against a plain-Python model of the log."""
from __future__ import annotations

import asyncio
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from syncline.engine.errors import ConcurrencyError, IdempotencyMismatch
from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.filters import EventFilter
from syncline.store import open_store

TENANTS = st.sampled_from(["acme", "globex"])
STREAMS = st.sampled_from(["a/1", "a/2", "b/1"])
KEYS = st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]))
PAYLOAD = st.integers(0, 3)


class StoreModel(RuleBasedStateMachine):
    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        url = self.url.replace("{tmp}", self.tmp.name)
        self.store = self.loop.run_until_complete(open_store(url))
        self.log: list[tuple[str, str, int, int]] = []  # (tenant, stream, version, payload) by position
        self.keys: dict[tuple[str, str], tuple[object, tuple[int, int]]] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def version(self, tenant: str, stream: str) -> int:
        return sum(1 for t, s, _, _ in self.log if (t, s) == (tenant, stream))

    @rule(tenant=TENANTS, writes=st.lists(st.tuples(STREAMS, st.lists(PAYLOAD, min_size=1, max_size=3),
                                                    st.booleans()), min_size=1, max_size=2, unique_by=lambda w: w[0]),
          key=KEYS)
    def append(self, tenant, writes, key):
        request = (tenant, tuple((s, tuple(p), guard) for s, p, guard in writes))
        sw = [
            StreamWrite(s, tuple(NewEvent("x.y", v) for v in p), self.version(tenant, s) if guard else None)
            for s, p, guard in writes
        ]
        if key is not None and (tenant, key) in self.keys:
            old_request, span = self.keys[(tenant, key)]
            try:
                r = self.run(self.store.append_many(tenant, sw, idempotency_key=key))
            except IdempotencyMismatch:
                assert old_request != request or any(g for _, _, g in writes)
                return
            assert r.duplicate and (r.first_position, r.last_position) == span
            return
        r = self.run(self.store.append_many(tenant, sw, idempotency_key=key))
        first = len(self.log) + 1
        for s, p, _ in writes:
            for v in p:
                self.log.append((tenant, s, self.version(tenant, s) + 1, v))
        assert (r.first_position, r.last_position) == (first, len(self.log))
        if key is not None:
            self.keys[(tenant, key)] = (request, (first, len(self.log)))

    @precondition(lambda self: self.log)
    @rule(tenant=TENANTS, stream=STREAMS, delta=st.integers(1, 3))
    def stale_append_conflicts(self, tenant, stream, delta):
        expected = self.version(tenant, stream) + delta
        try:
            self.run(self.store.append(tenant, stream, [NewEvent("x.y", 9)], expected_version=expected))
        except ConcurrencyError as e:
            assert e.actual == self.version(tenant, stream)
        else:
            raise AssertionError("a stale expected_version was accepted")

    @rule(tenant=TENANTS, stream=STREAMS, from_version=st.integers(1, 4))
    def read_stream_matches(self, tenant, stream, from_version):
        got = self.run(self.store.read_stream(tenant, stream, from_version=from_version))
        want = [(v, p) for t, s, v, p in self.log if (t, s) == (tenant, stream) and v >= from_version]
        assert [(e.version, e.data) for e in got] == want

    @rule(tenant=TENANTS, after=st.integers(0, 20), limit=st.integers(1, 5), prefix=st.sampled_from(["", "a/", "b/"]))
    def read_log_matches(self, tenant, after, limit, prefix):
        f = EventFilter(stream_prefixes=(prefix,)) if prefix else None
        page = self.run(self.store.read_log(tenant, after=after, limit=limit, filter=f))
        want = [
            (pos, s, p) for pos, (t, s, _, p) in enumerate(self.log, start=1)
            if pos > after and t == tenant and s.startswith(prefix)
        ][:limit]
        assert [(e.position, e.stream, e.data) for e in page.events] == want
        assert page.head == len(self.log)
        assert page.next_after >= after

    @invariant()
    def chain_verifies(self):
        assert self.run(self.store.verify()).ok

    def teardown(self):
        self.run(self.store.close())
        self.loop.close()
        self.tmp.cleanup()


class SqliteStoreModel(StoreModel):
    url = "sqlite+aiosqlite:///{tmp}/model.db"


TestMemoryStoreModel = StoreModel.TestCase
TestMemoryStoreModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestSqliteStoreModel = SqliteStoreModel.TestCase
TestSqliteStoreModel.settings = settings(max_examples=15, stateful_step_count=20, deadline=None)
