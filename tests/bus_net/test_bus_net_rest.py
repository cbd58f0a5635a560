"""Remote consumers over REST against a real gateway: filters declared over the wire,
leases, nack, ttl, leave, durable and broadcast kinds, bounds and error codes."""
from __future__ import annotations

import time

import httpx
import pytest
from waiting import wait_for

ADMIN = {"roles": ("admin",)}


def client(srv, tenant: str = "acme", user: str = "svc", **kw) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers=srv.headers(tenant=tenant, user=user, **kw), timeout=20)


def publish(c: httpx.Client, stream: str, *events: dict) -> dict:
    r = c.post(f"/v1/streams/{stream}", json={"events": list(events)})
    assert r.status_code == 201, r.text
    return r.json()


def join(c: httpx.Client, **spec) -> str:
    r = c.post("/v1/bus/consumers", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["session"]


def fetch(c: httpx.Client, sid: str, wait: float = 2.0, **params) -> list[dict]:
    r = c.post(f"/v1/bus/consumers/{sid}/fetch", params={"wait": wait, **params})
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


def drain(c: httpx.Client, sid: str, n: int, timeout: float = 15) -> list[dict]:
    """Fetch and ack until n deliveries came."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} deliveries"
        ds = fetch(c, sid, wait=1)
        if ds:
            r = c.post(f"/v1/bus/consumers/{sid}/ack", json={"ids": [d["id"] for d in ds]})
            assert r.json() == {"acked": len(ds), "unknown": []}
        got += ds
    return got


@pytest.fixture
def srv(net_gateway, sqlite_url):
    return net_gateway(sqlite_url)


def test_payload_filter_over_the_wire_delivers_only_matches_and_the_checkpoint_passes_the_rest(srv):
    with client(srv) as c, client(srv, user="ops", **ADMIN) as admin:
        for i in range(30):
            country = ("DE", "FR", "IT")[i % 3]
            publish(c, f"orders/{i % 4}", {"type": "item.added", "data": {"n": i, "customer": {"country": country}}})
            publish(c, f"audit/{i % 2}", {"type": "note.added", "data": {"n": i, "customer": {"country": "DE"}}})
        head = publish(c, "orders/0", {"type": "item.removed", "data": {"customer": {"country": "DE"}}})
        sid = join(c, group="de-items", filter={"types": ["item.add*"], "prefixes": ["orders/"],
                                                "where": [["customer.country", "in", ["DE"]]]})
        got = drain(c, sid, 10)
        assert sorted(d["event"]["data"]["n"] for d in got) == list(range(0, 30, 3))
        assert all(d["event"]["type"] == "item.added" and d["attempt"] == 1 for d in got)
        assert fetch(c, sid, wait=0) == []

        def checkpoint_at_head():
            g = [g for g in admin.get("/v1/bus/groups").json()["groups"] if g["group"] == "de-items"][0]
            return g["low_watermark"] >= head["last_position"]
        wait_for(checkpoint_at_head, 15, "the group's checkpoints to pass the filtered-out events")


@pytest.mark.parametrize("spec, code, field", [
    ({"group": "g", "filter": {"where": [["a", "gt", 1]]}}, "invalid", "filter.where"),
    ({"group": "g", "filter": {"where": [["a", "in", 1]]}}, "invalid", "filter.where"),
    ({"group": "g", "filter": {"types": "item.*"}}, "invalid", "filter.types"),
    ({"group": "g", "filter": {"prefixes": ["a\x00"]}}, "invalid", None),
    ({"group": "g", "filter": {"colour": ["red"]}}, "invalid", "filter"),
    ({"group": "g", "filter": {"tenant": "globex"}}, "tenant_violation", None),
    ({"group": "g", "kind": "fanout"}, "invalid", "kind"),
    ({"group": "bad name"}, "invalid", "group"),
    ({"group": "g", "lease_s": 0}, "invalid", "lease_s"),
    ({"group": "g", "lease_s": 10_000}, "invalid", "lease_s"),
    ({"group": "g", "max_batch": 0}, "invalid", "max_batch"),
    ({"group": "g", "max_batch": 1_000_000}, "invalid", "max_batch"),
])
def test_bad_subscriptions_are_refused_with_stable_codes(srv, spec, code, field):
    with client(srv) as c:
        r = c.post("/v1/bus/consumers", json=spec)
        assert r.status_code == (403 if code == "tenant_violation" else 400), r.text
        body = r.json()
        assert body["code"] == code
        if field:
            assert body["details"]["field"] == field
        metrics = c.get("/metrics").text
        assert f'syncline_bus_consumer_refused_total{{code="{code}"}} 1.0' in metrics


def test_filter_naming_own_tenant_is_fine(srv):
    with client(srv) as c:
        publish(c, "orders/1", {"type": "item.added", "data": {}})
        sid = join(c, group="own", filter={"tenant": "acme"})
        assert len(drain(c, sid, 1)) == 1


def test_tenant_isolation_over_rest(srv):
    """B can never see, fetch, ack, nack, extend or close A's session, nor get A's events."""
    with client(srv, tenant="acme") as a, client(srv, tenant="globex") as b:
        for i in range(5):
            publish(a, "orders/1", {"type": "item.added", "data": {"secret": i}})
        publish(b, "orders/1", {"type": "item.added", "data": {"mine": True}})
        sid_a = join(a, group="shared-name")
        held = fetch(a, sid_a, max=2)
        assert len(held) == 2
        ids = [d["id"] for d in held]
        for method, path, body in [("GET", "", None), ("POST", "/fetch", None), ("POST", "/ack", {"ids": ids}),
                                   ("POST", "/nack", {"ids": ids, "reason": "x"}), ("POST", "/extend", {"ids": ids}),
                                   ("POST", "/heartbeat", None), ("DELETE", "", None)]:
            r = b.request(method, f"/v1/bus/consumers/{sid_a}{path}", json=body)
            assert r.status_code == 404 and r.json()["code"] == "consumer_not_found", (path, r.text)
        # The same user name in another tenant does not help; nor does naming the tenant.
        r = b.post("/v1/bus/consumers", json={"group": "g"}, headers={"X-Tenant": "acme"})
        assert r.status_code == 403 and r.json()["code"] == "tenant_violation"
        # B's consumer of a group with the same name gets B's events only, and A's
        # delivery ids mean nothing in B's session.
        sid_b = join(b, group="shared-name")
        got = drain(b, sid_b, 1)
        assert [d["event"]["data"] for d in got] == [{"mine": True}]
        assert all(d["event"]["tenant"] == "globex" for d in got)
        r = b.post(f"/v1/bus/consumers/{sid_b}/nack", json={"ids": ids, "reason": "dead-letter A's events"})
        assert r.json() == {"nacked": 0, "unknown": ids}
        # A's deliveries are still A's: ack works.
        assert a.post(f"/v1/bus/consumers/{sid_a}/ack", json={"ids": ids}).json()["acked"] == 2
        with client(srv, tenant="globex", user="ops", **ADMIN) as b_admin:
            assert b_admin.get("/v1/bus/dead-letters").json()["entries"] == []


def test_lease_expiry_is_a_failed_attempt_then_the_dlq(srv):
    with client(srv) as c, client(srv, user="ops", **ADMIN) as admin:
        ev = publish(c, "orders/1", {"type": "item.added", "data": {}})["event_ids"][0]
        sid = join(c, group="slow", lease_s=0.3, max_attempts=2)
        (first,) = fetch(c, sid)
        assert first["attempt"] == 1 and first["lease_deadline_ms"] > time.time() * 1000
        (second,) = fetch(c, sid, wait=10)  # the lease ran out: delivered again
        assert second["event"]["id"] == ev and second["attempt"] == 2 and second["redelivered"]
        assert c.post(f"/v1/bus/consumers/{sid}/ack", json={"ids": [first["id"]]}).json()["unknown"] == [first["id"]]

        def dead():
            return [e for e in admin.get("/v1/bus/dead-letters").json()["entries"] if e["event_id"] == ev]
        (entry,) = wait_for(dead, 10, "the event in the DLQ")
        assert entry["attempts"] == 2 and "lease expired" in entry["reason"]
        assert 'syncline_bus_consumer_deliveries_total{outcome="lease_expired"} 2.0' in c.get("/metrics").text


def test_extend_keeps_the_lease_and_nack_with_delay_redelivers_with_trace(srv):
    with client(srv) as c, client(srv, user="ops", **ADMIN) as admin:
        ev = publish(c, "orders/1", {"type": "item.added", "data": {}})["event_ids"][0]
        sid = join(c, group="ext", lease_s=0.5, max_attempts=2)
        (d,) = fetch(c, sid)
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # keep extending past two lease lengths
            assert c.post(f"/v1/bus/consumers/{sid}/extend", json={"ids": [d["id"]]}).json()["unknown"] == []
            assert fetch(c, sid, wait=0.2) == []
        t0 = time.monotonic()
        r = c.post(f"/v1/bus/consumers/{sid}/nack", json={"ids": [d["id"]], "reason": "downstream 503",
                                                          "delay_s": 0.4, "trace": "at charge (billing.js:12)"})
        assert r.json() == {"nacked": 1, "unknown": []}
        (again,) = fetch(c, sid, wait=10)
        assert again["attempt"] == 2 and time.monotonic() - t0 >= 0.35
        c.post(f"/v1/bus/consumers/{sid}/nack", json={"ids": [again["id"]], "reason": "still 503",
                                                      "trace": "at charge (billing.js:12)"})
        (entry,) = wait_for(lambda: [e for e in admin.get("/v1/bus/dead-letters").json()["entries"]
                                     if e["event_id"] == ev], 10, "the DLQ entry")
        assert entry["reason"] == "still 503" and entry["trace"] == "at charge (billing.js:12)"


def test_leave_returns_deliveries_uncounted_and_ttl_closes_forgotten_sessions(srv):
    with client(srv) as c:
        ev = publish(c, "orders/1", {"type": "item.added", "data": {}})["event_ids"][0]
        sid = join(c, group="churn")
        (d,) = fetch(c, sid)
        assert c.delete(f"/v1/bus/consumers/{sid}").json() == {"session": sid, "left": True}
        assert c.get(f"/v1/bus/consumers/{sid}").status_code == 404
        sid2 = join(c, group="churn", ttl_s=0.5)
        (d2,) = fetch(c, sid2, wait=15)
        assert d2["event"]["id"] == ev and d2["attempt"] == 1  # leaving is not a failure
        # Not seen for its ttl: closed, and what it held counts as a failed attempt.
        wait_for(lambda: c.get(f"/v1/bus/consumers/{sid2}").status_code == 404, 10, "the ttl to close the session")
        sid3 = join(c, group="churn")
        (d3,) = fetch(c, sid3, wait=15)
        assert d3["event"]["id"] == ev and d3["attempt"] == 2
        m = c.get("/metrics").text
        assert 'syncline_bus_consumer_sessions_closed_total{reason="ttl"} 1.0' in m
        assert 'syncline_bus_consumer_sessions_closed_total{reason="left"} 1.0' in m


def test_durable_and_broadcast_kinds(srv):
    with client(srv) as c:
        for i in range(6):
            publish(c, f"orders/{i % 3}", {"type": "item.added", "data": {"n": i}})
        dur = join(c, group="mailer", kind="durable")
        got = drain(c, dur, 6)
        assert [d["event"]["data"]["n"] for d in got] == list(range(6))  # one partition: log order
        info = c.get(f"/v1/bus/consumers/{dur}").json()
        assert info["kind"] == "durable" and info["partitions"] == [0]
        bc = join(c, kind="broadcast")  # from the head: only what comes next
        publish(c, "orders/9", {"type": "item.added", "data": {"n": "new"}})
        got = drain(c, bc, 1)
        assert [d["event"]["data"]["n"] for d in got] == ["new"]


def test_bounds_sessions_per_tenant_batch_size(net_gateway, sqlite_url):
    srv = net_gateway(sqlite_url, bus_consumers_per_tenant=2, bus_consumer_batch_max=5)
    with client(srv) as c, client(srv, tenant="globex") as other:
        for i in range(12):
            publish(c, "orders/1", {"type": "item.added", "data": {"n": i}})
        sid = join(c, group="a", max_batch=5)
        join(c, group="b")
        r = c.post("/v1/bus/consumers", json={"group": "c"})
        assert r.status_code == 429 and r.json()["code"] == "too_many_consumers"
        assert r.json()["details"]["limit"] == "per_tenant"
        join(other, group="a")  # (another tenant's bound is its own)
        got = wait_for(lambda: fetch(c, sid, max=100), 10, "a batch")
        assert len(got) == 5  # capped at max_batch whatever the client asks
        assert 'syncline_bus_consumer_refused_total{code="too_many_consumers"} 1.0' in c.get("/metrics").text
        assert c.delete(f"/v1/bus/consumers/{sid}").status_code == 200
        join(c, group="c")  # room again


def test_openapi_documents_the_consumer_routes(srv):
    with client(srv) as c:
        paths = c.get("/schema/openapi.json").json()["paths"]
    for p in ("/v1/bus/consumers", "/v1/bus/consumers/{session_id}/fetch", "/v1/bus/consumers/{session_id}/ack",
              "/v1/bus/consumers/{session_id}/nack", "/v1/bus/consumers/{session_id}/extend",
              "/v1/bus/consumers/{session_id}"):
        assert p in paths, p
    assert "delete" in paths["/v1/bus/consumers/{session_id}"]


def test_a_stalled_consumer_does_not_stall_another_group_of_its_tenant(net_gateway, sqlite_url):
    """Groups on one gateway read the log apart: a consumer that never fetches holds its
    own bounded buffer, and another group keeps going (without that, the shared log
    reader waited on the stalled one until its ttl closed it)."""
    srv = net_gateway(sqlite_url, bus_consumer_buffer_max=20)
    with client(srv) as c:
        for i in range(40):
            publish(c, f"orders/{i % 4}", *({"type": "item.added", "data": {"n": j}} for j in range(25)))
        stalled = join(c, group="stalled", ttl_s=120)
        live = join(c, group="live", max_batch=1000)
        assert len(drain(c, live, 1000, timeout=20)) == 1000
        info = c.get(f"/v1/bus/consumers/{stalled}").json()
        assert 0 < info["waiting"] <= 20 and info["leased"] == 0


def test_a_remote_retry_held_by_its_consumer_does_not_hold_up_another_groups_retry(srv):
    """Retries are recorded attempts; in-process members take them one at a time per process
    (a crash is charged to one event). A remote consumer's retry must not take part in that:
    group A's consumer holds its second attempt for its whole lease, and group B's second
    attempt still arrives at once. With the process-wide lock it waited for A's lease."""
    with client(srv) as c:
        publish(c, "orders/1", {"type": "item.added", "data": {}})
        a = join(c, group="holds-retry", lease_s=30, max_attempts=5)
        b = join(c, group="quick-retry", lease_s=30, max_attempts=5)
        (da,) = fetch(c, a)
        c.post(f"/v1/bus/consumers/{a}/nack", json={"ids": [da["id"]], "delay_s": 0})
        (da2,) = fetch(c, a, wait=10)  # attempt 2 of A: in hand, neither acked nor nacked
        assert da2["attempt"] == 2
        (db,) = fetch(c, b)
        c.post(f"/v1/bus/consumers/{b}/nack", json={"ids": [db["id"]], "delay_s": 0})
        t0 = time.monotonic()
        got = fetch(c, b, wait=10)
        assert [d["attempt"] for d in got] == [2], "group B's retry arrived"
        assert time.monotonic() - t0 < 5, "and did not wait for group A's lease"
