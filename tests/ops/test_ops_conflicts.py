"""``syncline_conflicts_total{strategy, outcome}`` counts what reconciliation did, for every
strategy: real records service, real SQLite store, the gateway's op path (api/ops.py)."""
from __future__ import annotations

import time
from types import SimpleNamespace

from syncline.api.auth import Principal
from syncline.api.metrics import Metrics
from syncline.api.ops import submit_ops
from syncline.engine.clocks import HLCTimestamp
from syncline.engine.records import MANUAL, CollectionPolicy, ResolutionConfig, merged
from syncline.store import open_store
from syncline.store.records_service import RecordsService


def _op(op_id: str, client: str, ms: int, vc: dict, **fields) -> dict:
    return {"kind": "op", "op": op_id, "client": client, "user": "alice", "stream": "rec/notes/n1",
            "vc": vc, "hlc": HLCTimestamp(ms, 0, client).encode(), "set": fields}


def _count(metrics: Metrics, strategy: str, outcome: str) -> float:
    labels = {"strategy": strategy, "outcome": outcome}
    return metrics.registry.get_sample_value("syncline_conflicts_total", labels) or 0


async def test_conflicts_are_counted_by_strategy_and_outcome(sqlite_url):
    store = await open_store(sqlite_url)
    config = ResolutionConfig({"notes": CollectionPolicy(fields={"title": MANUAL, "likes": merged("counter")})})
    gw = SimpleNamespace(records=RecordsService(store, config), metrics=Metrics())
    alice = Principal("alice", "acme", frozenset(), frozenset({"write"}), exp=int(time.time()) + 600)
    now = int(time.time() * 1000)
    try:
        async def submit(*ops: dict) -> list[dict]:
            return await submit_ops(gw, alice, "", list(ops))

        # LWW: two concurrent writes of "body"; the later one wins (merged), then an outdated one loses.
        assert [r["kind"] for r in await submit(_op("a1", "ca", now, {"ca": 1}, body="a"))] == ["applied"]
        assert [r["kind"] for r in await submit(_op("b1", "cb", now + 5, {"cb": 1}, body="b"))] == ["merged"]
        late = (await submit(_op("c1", "cc", now - 50, {"cc": 1}, body="old")))[0]
        assert late["kind"] == "merged" and late["superseded"] == ["body"], late
        # A merge function: concurrent increments of "likes" add up.
        await submit(_op("a2", "ca", now + 10, {"ca": 2}, likes=1))
        assert (await submit(_op("b2", "cb", now + 11, {"cb": 2}, likes=2)))[0]["kind"] == "merged"
        # Manual: concurrent titles are kept as a conflict, then a person resolves it.
        await submit(_op("a3", "ca", now + 20, {"ca": 3}, title="A"))
        kept = (await submit(_op("b3", "cb", now + 21, {"cb": 3}, title="B")))[0]
        assert kept["kind"] == "conflict", kept
        [cid] = kept["conflicts"]
        resolve = {"kind": "resolve", "op": "r1", "client": "cr", "user": "alice", "stream": "rec/notes/n1",
                   "vc": {"ca": 3, "cb": 3, "cc": 1, "cr": 1}, "hlc": HLCTimestamp(now + 30, 0, "cr").encode(),
                   "conflict": cid, "field": "title", "choice": "a3"}
        assert (await submit(resolve))[0]["resolved"] == [cid]
    finally:
        await store.close()

    m = gw.metrics
    assert (_count(m, "lww", "merged"), _count(m, "lww", "superseded")) == (1, 1)
    assert _count(m, "merge", "merged") == 1
    assert (_count(m, "manual", "kept"), _count(m, "manual", "resolved")) == (1, 1)
