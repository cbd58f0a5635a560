"""The bus on the native WebSocket, against a real gateway: credit-based flow control and
the bounded buffer, filters, tenant isolation, per-connection bounds, publish answered
after the commit, idempotency keys, and a dropped connection counting what it held."""
from __future__ import annotations

import httpx
import pytest
from api_wsclient import NativeClient
from waiting import until

from syncline.engine import protocol as P


@pytest.fixture
def srv(net_gateway, sqlite_url):
    return net_gateway(sqlite_url, bus_consumer_buffer_max=40)


async def connect(srv, tenant: str = "acme", user: str = "svc", **kw) -> NativeClient:
    c = await NativeClient.connect(srv.ws_url, srv.token(tenant=tenant, user=user, **kw))
    await c.expect("welcome")
    return c


async def publish_rest(srv, stream: str, events: list[dict], tenant: str = "acme") -> dict:
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers(tenant=tenant, user="svc")) as h:
        r = await h.post(f"/v1/streams/{stream}", json={"events": events})
        assert r.status_code == 201, r.text
        return r.json()


def session_of(srv, session_id: str):
    return srv.gw.consumers.sessions.get(session_id)


async def test_credits_bound_what_is_sent_and_the_buffer_bounds_what_is_held(srv):
    for s in range(4):
        await publish_rest(srv, f"orders/{s}", [{"type": "item.added", "data": {"n": i}} for i in range(50)])
    c = await connect(srv)
    await c.send("consume", id="k", group="slow", max_batch=100)  # no credits yet
    consuming = await c.expect("consuming")
    s = session_of(srv, consuming["session"])
    # The session fills its buffer up to its bound and stops there; nothing is sent.
    await until(lambda: s.outstanding == 40, 10, "the buffer to fill to its bound")
    await c.send("ping", id=1)
    assert (await c.expect("pong"))["id"] == 1  # (nothing was pushed before the pong)
    assert s.outstanding == 40 and not s.leased
    # 7 credits: exactly 7 deliveries, then nothing until more credits.
    await c.send("credit", id="k", n=7)
    got = []
    while len(got) < 7:
        msg = await c.expect("deliveries")
        assert len(msg["deliveries"]) <= 7 - len(got)
        got += msg["deliveries"]
    assert msg["credits"] == 0
    await c.send("ping", id=2)
    assert (await c.recv())["t"] == "pong"
    assert len(s.leased) == 7 and s.outstanding <= 40
    # Acking frees room; the next batch comes in when it fits (never past the bound).
    await c.send("dack", id="k", ids=[d["id"] for d in got])
    await until(lambda: not s.leased, 10, "the acks")
    assert s.outstanding == 33
    # Per stream, in order.
    seen: dict[str, list[int]] = {}
    await c.send("credit", id="k", n=1000)
    while sum(map(len, seen.values())) + len(got) < 200:
        msg = await c.expect("deliveries")
        for d in msg["deliveries"]:
            seen.setdefault(d["event"]["stream"], []).append(d["event"]["version"])
        await c.send("dack", id="k", ids=[d["id"] for d in msg["deliveries"]])
        assert s.outstanding <= 40
    for e in got:
        seen.setdefault(e["event"]["stream"], []).append(e["event"]["version"])
    assert all(sorted(v) == list(range(1, 51)) for v in seen.values()) and len(seen) == 4
    await c.close()


async def test_filters_and_tenant_isolation_over_the_websocket(srv):
    await publish_rest(srv, "orders/1", [{"type": "item.added", "data": {"tier": t}} for t in ("gold", "tin", "gold")])
    await publish_rest(srv, "orders/1", [{"type": "item.added", "data": {"tier": "gold", "globex": True}}],
                       tenant="globex")
    a = await connect(srv)
    await a.send("consume", id="gold", group="gold", credits=10,
                 filter={"where": [["tier", "eq", "gold"]], "tenant": "acme"})
    await a.expect("consuming")
    got = []
    while len(got) < 2:
        got += (await a.expect("deliveries"))["deliveries"]
    assert [d["event"]["data"] for d in got] == [{"tier": "gold"}, {"tier": "gold"}]
    assert all(d["event"]["tenant"] == "acme" for d in got)
    # Another tenant in the filter: refused with a stable code, the connection stays.
    await a.send("consume", id="x", group="gold", filter={"tenant": "globex"})
    err = await a.expect("error")
    assert err["code"] == "tenant_violation" and err["ref"] == "x"
    await a.send("consume", id="y", group="gold", filter={"where": [["tier", "like", "g%"]]})
    err = await a.expect("error")
    assert err["code"] == "invalid" and err["details"]["reason"] == "invalid_filter"

    # B (another tenant) cannot touch A's consumer or deliveries: ids are per connection.
    b = await connect(srv, tenant="globex")
    for t, extra in (("credit", {"n": 5}), ("dack", {"ids": [got[0]["id"]]}),
                     ("dnack", {"ids": [got[0]["id"]], "reason": "x"}), ("extend", {"ids": [got[0]["id"]]}),
                     ("unconsume", {})):
        await b.send(t, id="gold", **extra)
        err = await b.expect("error")
        assert err["code"] == "consumer_not_found", (t, err)
    # B's own consumer of a group with the same name gets B's event only; A's ids mean nothing there.
    await b.send("consume", id="gold", group="gold", credits=10)
    await b.expect("consuming")
    (mine,) = (await b.expect("deliveries"))["deliveries"]
    assert mine["event"]["data"] == {"tier": "gold", "globex": True}
    await b.send("dnack", id="gold", ids=[got[0]["id"], got[1]["id"]], reason="dead-letter A's events")
    settled = await b.expect("settled")
    assert settled["unknown"] == [got[0]["id"], got[1]["id"]] and settled["op"] == "dnack"
    # A's deliveries are untouched: A acks them.
    await a.send("dack", id="gold", ids=[d["id"] for d in got])
    await a.send("ping", id=9)
    assert (await a.expect("pong"))["id"] == 9  # no 'settled' with unknown ids came first
    # A message naming another tenant at the top level closes the connection (4403).
    await b.send("consume", id="z", group="g", tenant="acme")
    code, _ = await b.closed()
    assert code == 4403
    await a.close()


async def test_dropped_connection_counts_held_deliveries_and_frees_the_partitions(srv):
    ev = (await publish_rest(srv, "orders/1", [{"type": "item.added", "data": {}}]))["event_ids"][0]
    a = await connect(srv)
    await a.send("consume", id="k", group="g", credits=1, max_attempts=3)
    await a.expect("consuming")
    (d,) = (await a.expect("deliveries"))["deliveries"]
    assert d["attempt"] == 1
    await a.close()  # (any end of the connection but unconsume: the consumer is gone)
    b = await connect(srv)
    await b.send("consume", id="k", group="g", credits=1)
    await b.expect("consuming")
    (again,) = (await b.expect("deliveries", timeout=30))["deliveries"]
    assert again["event"]["id"] == ev and again["attempt"] == 2  # the drop was a failed attempt
    async with httpx.AsyncClient(base_url=srv.url) as h:
        m = (await h.get("/metrics")).text
    assert 'syncline_bus_consumer_sessions_closed_total{reason="disconnected"} 1.0' in m
    assert 'syncline_bus_consumer_deliveries_total{outcome="lost"} 1.0' in m
    await b.close()


async def test_consumers_per_connection_are_bounded(net_gateway, sqlite_url):
    srv = net_gateway(sqlite_url, bus_consumers_per_connection=2)
    c = await connect(srv)
    for i in range(2):
        await c.send("consume", id=f"k{i}", group=f"g{i}")
        await c.expect("consuming")
    await c.send("consume", id="k2", group="g2")
    err = await c.expect("error")
    assert err["code"] == "too_many_consumers" and err["details"]["limit"] == "per_connection"
    await c.send("unconsume", id="k0")
    assert (await c.expect("consumer_closed"))["reason"] == "left"
    await c.send("consume", id="k2", group="g2")
    await c.expect("consuming")
    await c.close()


async def test_publish_answers_after_the_commit_and_a_repeated_key_returns_the_first_result(srv):
    c = await connect(srv)
    await c.send("publish", id="p1", stream="orders/7", key="order-7-created",
                 events=[{"type": "item.added", "data": {"n": 1}}, {"type": "item.added", "data": {"n": 2}}])
    first = await c.expect("published")
    assert first["id"] == "p1" and first["duplicate"] is False
    assert first["last_position"] == first["first_position"] + 1 and len(first["event_ids"]) == 2
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers(tenant="acme", user="svc")) as h:
        # Committed before the answer: readable at once.
        events = (await h.get("/v1/streams/orders/7")).json()["events"]
        assert [e["position"] for e in events] == [first["first_position"], first["last_position"]]
        # The same key again, over WS and over REST: the first result, nothing appended.
        await c.send("publish", id="p2", stream="orders/7", key="order-7-created",
                     events=[{"type": "item.added", "data": {"n": 1}}, {"type": "item.added", "data": {"n": 2}}])
        again = await c.expect("published")
        assert again["duplicate"] is True and again["id"] == "p2"
        assert (again["first_position"], again["last_position"], again["event_ids"]) == (
            first["first_position"], first["last_position"], first["event_ids"])
        r = await h.post("/v1/streams/orders/7", headers={"Idempotency-Key": "order-7-created"},
                         json={"events": [{"type": "item.added", "data": {"n": 1}},
                                          {"type": "item.added", "data": {"n": 2}}]})
        assert r.status_code == 201 and r.json()["duplicate"] is True
        assert r.json()["first_position"] == first["first_position"]
        assert len((await h.get("/v1/streams/orders/7")).json()["events"]) == 2
    # Refusals keep their REST codes: system streams, critical types, a version conflict.
    await c.send("publish", id="p3", stream="$audit", events=[{"type": "x.y"}])
    assert (await c.expect("error"))["code"] == "forbidden"
    await c.send("publish", id="p4", stream="orders/7", expected_version=0, events=[{"type": "item.added"}])
    err = await c.expect("error")
    assert err["code"] == "version_conflict" and err["ref"] == "p4"
    await c.close()
    # Without the write permission: refused.
    r = await connect(srv, roles=("viewer",))
    await r.send("publish", id="p5", stream="orders/8", events=[{"type": "item.added"}])
    assert (await r.expect("error"))["code"] == "forbidden"
    await r.close()


@pytest.mark.parametrize("msg", [
    {"t": P.CREDIT, "id": "k", "n": 0},
    {"t": P.CREDIT, "id": "k", "n": 10**9},
    {"t": P.DACK, "id": "k", "ids": []},
    {"t": P.DNACK, "id": "k", "ids": ["1"], "delay_s": -1},
    {"t": P.PUBLISH, "id": "p", "stream": "s", "events": []},
])
async def test_malformed_bus_messages_are_protocol_errors(srv, msg):
    c = await connect(srv)
    await c.send_raw(P.encode_frame(msg))
    code, seen = await c.closed()
    assert code == 4400 and seen and seen[-1]["code"] == "invalid_message"
