"""Issue 15 item 10: refused attempts cannot grow the never-pruned ``$security`` stream at will.

500 refused cross-tenant requests against a real gateway write a handful of events whose
counts add up to 500, while /metrics counts every attempt; windows close on time; the
table of open windows is bounded and what overflows it is counted.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402

from syncline.store import open_store  # noqa: E402

A, B = "acme", "globex"


@pytest.fixture
def live_gateway(tmp_path):
    started: list[RunningGateway] = []

    def factory(**overrides) -> RunningGateway:
        g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/g{len(started)}.db", **overrides)).start()
        started.append(g)
        return g

    yield factory
    for g in started:
        g.stop()


def _metric(srv, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{srv.url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def _security_events(db_path: Path, tenant: str) -> list:
    async def go():
        store = await open_store(f"sqlite+aiosqlite:///{db_path}")
        try:
            return await store.read_stream(tenant, "$security")
        finally:
            await store.close()

    return asyncio.run(go())


def _refuse(srv, n_reads: int, n_writes: int, user: str = "eve") -> None:
    """Refused cross-tenant requests, 50 at a time (each request costs the loopback's
    delayed ACK, ~40 ms, one after the other)."""
    async def go():
        sem = asyncio.Semaphore(50)
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers(tenant=B, user=user),
                                     limits=httpx.Limits(max_connections=50), timeout=30) as c:
            async def one(i: int) -> None:
                async with sem:
                    if i < n_reads:
                        r = await c.get("/v1/streams/secret/1", headers={"X-Tenant": A}, params={"n": i})
                    else:
                        r = await c.post("/v1/streams/secret/1",
                                         json={"events": [{"type": "note.added"}], "tenant": A})
                assert r.status_code == 403 and r.json()["code"] == "tenant_violation"

            await asyncio.gather(*(one(i) for i in range(n_reads + n_writes)))

    asyncio.run(go())


def test_500_refused_requests_write_a_handful_of_events_whose_counts_add_up(tmp_path):
    db = tmp_path / "gw.db"
    srv = RunningGateway(base_settings(f"sqlite+aiosqlite:///{db}", security_window_s=3600.0)).start()
    try:
        _refuse(srv, 400, 100)
        # /metrics counts every attempt
        assert _metric(srv, "syncline_security_events_total") == 500
        # the first attempt of each kind is in the log at once
        seen = srv.call(srv.gw.store.read_stream(B, "$security"))
        assert sorted(e.type for e in seen) == ["security.cross-tenant-attempt", "security.cross-tenant-write"]
        assert all(e.data["count"] == 1 and e.data["user"] == "eve" for e in seen)
    finally:
        srv.stop()  # closes the open windows: their summaries are written before the store closes
    events = _security_events(db, B)
    assert len(events) <= 4, [e.data for e in events]
    counts: dict[str, int] = {}
    for e in events:
        counts[e.type] = counts.get(e.type, 0) + e.data["count"]
        assert e.retention.value == "critical"
    assert counts == {"security.cross-tenant-attempt": 400, "security.cross-tenant-write": 100}
    summary = [e for e in events if e.data.get("aggregated")]
    assert {e.data["count"] for e in summary} == {399, 99}
    for e in summary:
        assert 0 < len(e.data["samples"]) <= 3 and e.data["first"] <= e.data["last"]


def test_windows_close_on_time_and_the_table_is_bounded(live_gateway):
    srv = live_gateway(security_window_s=60.0, security_aggregate_max=2)
    gw = srv.gw
    _refuse(srv, 5, 0, user="u1")
    _refuse(srv, 5, 0, user="u2")
    _refuse(srv, 7, 0, user="u3")  # no room for a third window: counted, not recorded
    assert _metric(srv, "syncline_security_events_total") == 17
    assert _metric(srv, "syncline_security_aggregate_overflow_total") == 7
    assert len(gw.security_windows.windows) == 2
    # nothing has closed yet; a minute later both windows have
    assert srv.call(gw.flush_security()) == 0
    assert srv.call(gw.flush_security(now=gw.clock.time() + 61)) == 2
    assert gw.security_windows.windows == {}
    events = srv.call(gw.store.read_stream(B, "$security"))
    by_user: dict[str, int] = {}
    for e in events:
        by_user[e.data["user"]] = by_user.get(e.data["user"], 0) + e.data["count"]
    assert by_user == {"u1": 5, "u2": 5}
    assert _metric(srv, "syncline_security_events_recorded_total") == 4
    # the table has room again: u3's next attempt opens a window and is recorded at once
    _refuse(srv, 1, 0, user="u3")
    events = srv.call(gw.store.read_stream(B, "$security"))
    assert events[-1].data["user"] == "u3" and events[-1].data["count"] == 1
