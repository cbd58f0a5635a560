"""Issue 15, item 2: bounded clocks.

An op whose HLC is far ahead of the server's clock (``ffffffffffff-00000000-m1``, year
~10889) used to win last-writer-wins against every later write, freezing the field for
good. The server now refuses ops more than ``max_clock_skew_ms`` ahead (``clock_skew``,
with the server's time), bounds vector-clock counters and entries (``invalid_clock``) and
refuses clocks claiming writes the record never had (``clock_unseen``), on every path
that takes a client clock. The client kit re-stamps a skewed op once from the server's
time, and surfaces a second refusal as a rejected op.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
from api_support import RunningGateway, base_settings  # noqa: E402
from api_wsclient import NativeClient  # noqa: E402

from syncline.clientkit.core import OpResult, SessionCore, State  # noqa: E402
from syncline.clientkit.queue import SqliteOpQueue  # noqa: E402
from syncline.clientkit.transports.core_server import CoreServer, open_config  # noqa: E402
from syncline.clientkit.transports.memory import MemoryLink  # noqa: E402
from syncline.engine import protocol as P  # noqa: E402
from syncline.engine.clocks import HLCTimestamp, VectorClock  # noqa: E402
from syncline.engine.records import (  # noqa: E402
    ClientOp,
    CollectionPolicy,
    OutcomeKind,
    RecordsState,
    ResolutionConfig,
    reconcile,
)
from syncline.engine.sync_server import ServerConfig  # noqa: E402
from syncline.store.memory_sync_log import MemorySyncLog  # noqa: E402

FROZEN = "ffffffffffff-00000000-m1"
SKEW_MS = 300_000


@pytest.fixture
def gateway(tmp_path):
    started: list[RunningGateway] = []

    def factory(**overrides) -> RunningGateway:
        db = overrides.pop("database_url", f"sqlite+aiosqlite:///{tmp_path}/clk{len(started)}.db")
        g = RunningGateway(base_settings(db, **overrides)).start()
        started.append(g)
        return g

    yield factory
    for g in started:
        g.stop()


def _hlc(ms: int, node: str) -> str:
    return HLCTimestamp(ms, 0, node).encode()


def _op(op_id: str, client: str, hlc: str, title: str, vc: dict | None = None, user: str = "alice") -> dict:
    return {"kind": "op", "op": op_id, "client": client, "user": user, "stream": "rec/notes/n1",
            "hlc": hlc, "vc": vc or {client: 1}, "set": {"title": title}}


def _title(c: httpx.Client) -> str:
    r = c.get("/v1/records/notes/n1")
    assert r.status_code == 200, r.text
    return r.json()["values"].get("title")


def test_frozen_field_exploit_is_refused_and_later_honest_writes_win(gateway):
    srv = gateway()
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as alice, \
            httpx.Client(base_url=srv.url, headers=srv.headers(user="bob")) as bob:
        now = int(time.time() * 1000)
        assert bob.post("/v1/ops", json={"ops": [_op("b1", "cb", _hlc(now, "cb"), "v1", user="bob")]}
                        ).json()["results"][0]["kind"] == "applied"
        # The exploit: the year-10889 timestamp.
        r = alice.post("/v1/ops", json={"ops": [_op("m1", "m1", FROZEN, "frozen", vc={"m1": 1, "cb": 1})]})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["kind"] == "rejected" and res["reason"] == "clock_skew", res
        assert abs(res["server_ms"] - now) < 60_000
        assert _title(alice) == "v1"
        # Just past the bound is refused; inside it is accepted.
        later = int(time.time() * 1000)
        r = alice.post("/v1/ops", json={"ops": [_op("m2", "m1", _hlc(later + SKEW_MS + 60_000, "m1"), "x",
                                                     vc={"m1": 1, "cb": 1})]})
        assert r.json()["results"][0]["reason"] == "clock_skew"
        # Honest concurrent writes keep winning by time, each one changes the value.
        for i, who in enumerate(["alice", "bob", "alice"]):
            c, client = (alice, "m1") if who == "alice" else (bob, "cb")
            t = int(time.time() * 1000) + i
            r = c.post("/v1/ops", json={"ops": [_op(f"h{i}", client, _hlc(t, client), f"honest{i}",
                                                     vc={client: 2 + i}, user=who)]})
            assert r.json()["results"][0]["kind"] in ("applied", "merged"), r.json()
            assert r.json()["results"][0].get("superseded") is None, r.json()
            assert _title(c) == f"honest{i}"
        m = httpx.get(f"{srv.url}/metrics").text
        assert 'syncline_ops_rejected_total{reason="clock_skew"} 2.0' in m


def test_native_ops_get_a_per_op_clock_skew_outcome(gateway):
    srv = gateway()

    async def main():
        c = await NativeClient.connect(srv.ws_url, srv.token(user="alice"))
        await c.expect(P.WELCOME)
        now = int(time.time() * 1000)
        await c.send(P.OPS, id="b1", ops=[_op("n1", "m1", FROZEN, "frozen"),
                                          {**_op("n2", "m2", _hlc(now, "m2"), "ok"), "stream": "rec/notes/n2"}])
        ack = await c.expect(P.OPACKS)
        await c.close()
        return ack

    ack = asyncio.run(main())
    first, second = ack["results"]
    assert first["kind"] == "rejected" and first["reason"] == "clock_skew" and isinstance(first["server_ms"], int)
    assert second["kind"] == "applied"


def test_rest_paths_taking_client_clocks_are_bounded(gateway):
    srv = gateway()
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as c:
        # Raw record events would skip reconcile: records are written through ops only.
        patch = {"op": "x", "client": "m1", "user": "alice", "hlc": FROZEN, "vc": {"m1": 1}, "base": 0,
                 "lww": {"title": "frozen"}}
        r = c.post("/v1/streams/rec/notes/n1", json={"events": [{"type": "record.patched", "data": patch}]})
        assert r.status_code == 403 and r.json()["details"]["reason"] == "records_via_ops", r.text
        # An event's clock is relayed to every subscriber (the client kit follows it): bounded too.
        r = c.post("/v1/streams/notes/1", json={"events": [{"type": "note.added", "clock": {"hlc": FROZEN}}]})
        assert r.status_code == 400 and r.json()["code"] == "clock_skew", r.text
        assert isinstance(r.json()["details"]["server_ms"], int)
        r = c.post("/v1/streams/notes/1", json={"events": [{"type": "note.added", "clock": {"vc": {"a": 2 ** 60}}}]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_clock", r.text
        ok = {"hlc": _hlc(int(time.time() * 1000), "m1"), "vc": {"m1": 3}}
        r = c.post("/v1/streams/notes/1", json={"events": [{"type": "note.added", "clock": ok}]})
        assert r.status_code == 201, r.text


def test_vector_clock_counters_and_unseen_writes_are_refused(gateway):
    srv = gateway(max_clock_entries=8)
    now = int(time.time() * 1000)
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as alice, \
            httpx.Client(base_url=srv.url, headers=srv.headers(user="bob")) as bob:
        def send(c, op):
            return c.post("/v1/ops", json={"ops": [op]}).json()["results"][0]

        assert send(bob, _op("b1", "cb", _hlc(now, "cb"), "v1", user="bob"))["kind"] == "applied"
        # A counter past 2^53 - 1 (and past what JSON clients can hold).
        r = send(alice, _op("a1", "ca", _hlc(now, "ca"), "x", vc={"ca": 2 ** 60}))
        assert r["reason"] == "invalid_clock", r
        # Too many nodes.
        r = send(alice, _op("a2", "ca", _hlc(now, "ca"), "x", vc={"ca": 1, **{f"n{i}": 1 for i in range(9)}}))
        assert r["reason"] == "invalid_clock", r
        # Claiming bob's future writes (which would make bob's next writes look older, and
        # push his counter towards the limit): refused.
        r = send(alice, _op("a3", "ca", _hlc(now, "ca"), "x", vc={"ca": 1, "cb": (1 << 53) - 1}))
        assert r["reason"] == "clock_unseen", r
        # What alice has seen is fine; bob's next write still applies.
        assert send(alice, _op("a4", "ca", _hlc(now + 1, "ca"), "a", vc={"ca": 1, "cb": 1}))["kind"] == "applied"
        assert send(bob, _op("b2", "cb", _hlc(now + 2, "cb"), "b", vc={"ca": 1, "cb": 2}, user="bob")
                    )["kind"] == "applied"
        assert _title(bob) == "b"


# --------------------------------------------------------------------------- properties (engine)

NOW = 1_800_000_000_000
CFG = ResolutionConfig({}, default_collection=CollectionPolicy(), max_clock_skew_ms=SKEW_MS,
                       max_clock_counter=(1 << 53) - 1, max_clock_entries=64, causal_clocks=True)

ops_st = st.lists(
    st.tuples(st.sampled_from(["c1", "c2", "c3", "c4"]),
              st.integers(min_value=-10 * SKEW_MS, max_value=10 * SKEW_MS) | st.sampled_from(
                  [SKEW_MS, SKEW_MS + 1, (1 << 48) - 1 - NOW]),
              st.sampled_from(["a", "b"]), st.integers(0, 100)),
    min_size=1, max_size=12)


def _ops(spec) -> list[ClientOp]:
    ticks: dict[str, int] = {}
    out = []
    for i, (client, offset, field, value) in enumerate(spec):
        ticks[client] = ticks.get(client, 0) + 1
        out.append(ClientOp(f"{client}.{i}", client, "u", "rec/c/r", VectorClock({client: ticks[client]}),
                            HLCTimestamp(NOW + offset, 0, client), {field: value}))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=ops_st, seed=st.integers(0, 2 ** 32))
def test_property_the_bound_holds_and_accepted_ops_merge_in_any_order(spec, seed):
    ops = _ops(spec)
    r = reconcile(RecordsState(), ops, CFG, now_ms=NOW)
    accepted = []
    for op, o in zip(ops, r.outcomes):
        ahead = op.hlc.wall_ms - NOW
        if ahead > SKEW_MS:
            assert o.kind is OutcomeKind.REJECTED and o.reason == "clock_skew"
        else:
            assert o.kind is not OutcomeKind.REJECTED, o
            accepted.append(op)
    # No accepted write is stamped beyond the bound.
    for rec in r.state.records.values():
        for f in rec.fields.values():
            assert f.hlc.wall_ms - NOW <= SKEW_MS
    # Accepted ops (concurrent: each names only its client) give the same record in any
    # order, and the same as the whole batch with the skewed ops in it.
    shuffled = accepted[:]
    random.Random(seed).shuffle(shuffled)
    # (per client the order is kept: a client's ticks only grow)
    by_client: dict[str, list] = {}
    for op in accepted:
        by_client.setdefault(op.client, []).append(op)
    order = []
    iters = {c: iter(v) for c, v in by_client.items()}
    for op in shuffled:
        order.append(next(iters[op.client]))
    again = reconcile(RecordsState(), order, CFG, now_ms=NOW)
    assert all(o.kind is not OutcomeKind.REJECTED for o in again.outcomes)
    values = {s: rec.values() for s, rec in r.state.records.items()}
    assert values == {s: rec.values() for s, rec in again.state.records.items()}


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(counter=st.integers(1, 2 ** 63 - 1), entries=st.integers(1, 80))
def test_property_vector_clock_bounds(counter, entries):
    vc = {"me": counter, **{f"n{i:03d}": 0 for i in range(entries - 1)}}
    vc = {k: v for k, v in vc.items() if v}
    extra = {f"n{i:03d}": 1 for i in range(entries - 1)}
    op = ClientOp("o1", "me", "u", "rec/c/r", VectorClock({**vc, **extra}), HLCTimestamp(NOW, 0, "me"), {"a": 1})
    o = reconcile(RecordsState(), [op], CFG, now_ms=NOW).outcomes[0]
    if counter > CFG.max_clock_counter or entries > CFG.max_clock_entries:
        assert o.reason == "invalid_clock"
    elif entries > 1:
        assert o.reason == "clock_unseen"  # the other nodes' writes are not in the record
    else:
        assert o.kind is OutcomeKind.APPLIED


# --------------------------------------------------------------------------- the client kit


def _kit(tmp_path, offset_ms: int, **core_kw):
    """A client kit core whose clock is ``offset_ms`` off, against the server core with the bound."""
    resolution = ResolutionConfig({}, default_collection=CollectionPolicy(), max_clock_skew_ms=SKEW_MS)
    server = CoreServer(MemorySyncLog(), resolution, config=ServerConfig())
    core = SessionCore(user="u", client_id="ck", queue=SqliteOpQueue(tmp_path / "q.db"),
                       config=open_config(), rng=random.Random(1), **core_kw)
    link = MemoryLink(core, server, wire=True)
    return server, core, link, offset_ms


def test_client_kit_restamps_a_skewed_op_from_the_server_time(tmp_path):
    server, core, link, skew = _kit(tmp_path, 3_600_000)
    now = NOW
    link.run(now)
    assert core.state is State.ONLINE
    # The device's clock is an hour ahead; the server's core judges ops at its own ``now``.
    link.do(core.set("rec/notes/1", {"title": "hello"}, now + skew), now)
    link.run(now)
    results = [o for o in link.outputs if type(o) is OpResult]
    assert [r.kind for r in results] == ["applied"], results  # re-stamped once, then applied
    assert len(core.queue) == 0
    assert abs(core.clock_offset_ms + skew) < 1_000
    rec = server.records.records["rec/notes/1"]
    assert rec.values() == {"title": "hello"}
    assert rec.fields["title"].hlc.wall_ms <= now + SKEW_MS
    # New ops are stamped with the corrected clock: accepted at once.
    link.do(core.set("rec/notes/1", {"title": "again"}, now + skew + 10), now + 10)
    link.run(now + 10)
    assert [o.kind for o in link.outputs if type(o) is OpResult][-1] == "applied"
    assert server.records.records["rec/notes/1"].values() == {"title": "again"}


def test_client_kit_surfaces_a_second_clock_skew_as_rejected_and_never_loops(tmp_path):
    server, core, link, _ = _kit(tmp_path, 0)
    link.run(NOW)
    # A server whose clock jumps back by an hour between the two judgements: the op is
    # stamped again once; the second refusal reaches the app as a rejected op.
    link.feed(core.set("rec/notes/1", {"title": "x"}, NOW + 2 * SKEW_MS), NOW)
    link.step(NOW)  # judged at NOW: refused, stamped again from server_ms, sent again
    assert [o for o in link.outputs if type(o) is OpResult] == [] and len(core.queue) == 1
    link.run(NOW - 3_600_000)  # judged again an hour earlier: refused again
    results = [o for o in link.outputs if type(o) is OpResult]
    assert [(r.kind, r.result.get("reason")) for r in results] == [("rejected", "clock_skew")]
    assert len(core.queue) == 0 and core.get("rec/notes/1") == {}
    assert "rec/notes/1" not in server.records.records


def test_client_kit_does_not_follow_a_remote_clock_far_ahead(tmp_path):
    _, core, link, _ = _kit(tmp_path, 0)
    link.run(NOW)
    core.receive(P.message(P.EVENTS, sub="main", next=5, events=[
        {"position": 5, "stream": "notes/1", "type": "note.added", "clock": {"hlc": FROZEN}, "data": None}]), NOW)
    assert core._next_hlc(NOW).wall_ms == NOW


def test_a_stale_cache_of_another_gateway_does_not_refuse_an_honest_clock(tmp_path):
    """Two records services on one database (two gateways): the one whose cache lags a write
    of the other judges ``clock_unseen`` again on fresh state before refusing."""
    from syncline.api.ops import default_resolution
    from syncline.store import open_store
    from syncline.store.records_service import RecordsService

    def op(op_id, client, vc, title):
        return ClientOp(op_id, client, "u", "rec/notes/1", VectorClock(vc), HLCTimestamp(NOW, 0, client),
                        {"title": title})

    async def main():
        store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/two.db")
        try:
            kw = dict(clock_ms=lambda: NOW, max_clock_skew_ms=SKEW_MS, max_clock_counter=(1 << 53) - 1,
                      max_clock_entries=64, causal_clocks=True)
            a, b = RecordsService(store, default_resolution(), **kw), RecordsService(store, default_resolution(), **kw)
            assert (await b.submit("acme", [op("b1", "c2", {"c2": 1}, "b")]))[0].kind is OutcomeKind.APPLIED
            assert (await a.submit("acme", [op("a1", "c1", {"c1": 1, "c2": 1}, "a")]))[0].kind is OutcomeKind.APPLIED
            # b has not seen a1; c2 has (from the log): its clock names c1:1.
            out = await b.submit("acme", [op("b2", "c2", {"c1": 1, "c2": 2}, "b2")])
            assert out[0].kind is OutcomeKind.APPLIED, out
            # A clock naming writes nobody made is still refused.
            out = await b.submit("acme", [op("b3", "c2", {"c1": 5, "c2": 3}, "x")])
            assert out[0].reason == "clock_unseen", out
            assert (await a.record("acme", "rec/notes/1")).values() == {"title": "b2"}
        finally:
            await store.close()

    asyncio.run(main())


def test_client_kit_with_a_clock_an_hour_ahead_syncs_through_the_live_gateway(gateway):
    """The asyncio client kit against the real gateway: its device clock is an hour fast.
    Its first op is refused (clock_skew), stamped again from ``server_ms`` and applied; a
    correctly clocked client's later write still wins."""
    from syncline.clientkit.client import SynclineClient

    srv = gateway()
    results: list = []

    async def main():
        fast = SynclineClient(srv.url, srv.token(user="alice"), user="alice",
                              clock_ms=lambda: time.time_ns() // 1_000_000 + 3_600_000)
        fast.callbacks["on_op_result"] = lambda op_id, kind, result: results.append((kind, result))
        honest = SynclineClient(srv.url, srv.token(user="bob"), user="bob")
        await fast.start()
        await honest.start()
        try:
            fast.set("rec/notes/n1", {"title": "from the fast device"})
            await fast.wait_synced(20)
            await honest.wait_until(lambda: honest.get("rec/notes/n1").get("title") == "from the fast device", 20)
            honest.set("rec/notes/n1", {"title": "later, honest"})
            await honest.wait_synced(20)
            await fast.wait_until(lambda: fast.get("rec/notes/n1").get("title") == "later, honest", 20)
            return fast.core.clock_offset_ms
        finally:
            await fast.close()
            await honest.close()

    offset = asyncio.run(main())
    assert -3_700_000 < offset < -3_500_000
    assert [k for k, _ in results] == ["applied"], results
    with httpx.Client(base_url=srv.url, headers=srv.headers()) as c:
        assert _title(c) == "later, honest"
    m = httpx.get(f"{srv.url}/metrics").text
    assert 'syncline_ops_rejected_total{reason="clock_skew"} 1.0' in m
