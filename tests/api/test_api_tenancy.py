"""Tenant isolation: a tenant-B token never reads or changes tenant-A data, over every
route and message type; naming another tenant is refused and logged; super-admin reads
of another tenant need a justification and are audited."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from api_wsclient import NativeClient, ws_close_code

from syncline.engine import protocol as P

A, B = "acme", "globex"


def seed_tenant_a(srv) -> dict:
    with httpx.Client(base_url=srv.url, headers=srv.headers(tenant=A)) as c:
        assert c.post("/v1/streams/secret/1", json={"events": [{"type": "note.added", "data": {"s": "A-only"}}]}
                      ).status_code == 201
        r = c.post("/v1/commands/order.placed", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
        assert r.status_code == 202
        return {"command_id": r.json()["command_id"]}


READS = [
    "/v1/log", "/v1/streams/secret/1", "/v1/events/poll", "/api/events/poll", "/v1/deltas",
    "/v1/sync/deltas?prefix=secret/", "/v1/snapshots?prefix=secret/", "/v1/records/notes/1",
    "/v1/rooms/lobby/presence", "/v1/docs/d1", "/v1/commands/{command_id}",
    "/v1/feeds/users/alice", "/v1/feeds/rooms/lobby", "/v1/rooms/lobby/history", "/v1/stats/streams/secret/1",
]


@pytest.mark.parametrize("path", READS)
def test_other_tenant_reads_nothing_and_cannot_name_tenant_a(srv, path):
    ids = seed_tenant_a(srv)
    path = path.format(**ids)
    with httpx.Client(base_url=srv.url, headers=srv.headers(tenant=B, user="eve")) as c:
        r = c.get(path)
        assert r.status_code in (200, 404), r.text
        assert "A-only" not in r.text and '"acme"' not in r.text
        # naming tenant A: refused with a code, whatever the channel
        for extra in ({"headers": {"X-Tenant": A}}, {"params": {"tenant": A}}):
            r = c.get(path, **extra)
            assert r.status_code == 403 and r.json()["code"] == "tenant_violation"
        # even an admin of B cannot
        r = c.get(path, headers={"X-Tenant": A, **srv.headers(tenant=B, roles=["admin"])})
        assert r.status_code == 403


WRITES = [
    ("POST", "/v1/streams/secret/1", {"events": [{"type": "note.added"}], "tenant": A}),
    ("POST", "/v1/commands/order.placed", {"amount": 2, "tenant": A}),
    ("POST", "/v1/ops", {"ops": [{"op": "x"}], "tenant": A}),
]


@pytest.mark.parametrize("method,path,body", WRITES)
def test_writes_naming_another_tenant_are_refused_and_logged(srv, method, path, body):
    seed_tenant_a(srv)
    with httpx.Client(base_url=srv.url, headers={**srv.headers(tenant=B, user="eve"),
                                                 "Idempotency-Key": uuid.uuid4().hex}) as c:
        r = c.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["code"] == "tenant_violation"
    # nothing changed in A, and the attempt is a security event in B's log
    with httpx.Client(base_url=srv.url, headers=srv.headers(tenant=A)) as c:
        assert len(c.get("/v1/streams/secret/1").json()["events"]) == 1
    sec = httpx.get(f"{srv.url}/v1/streams/$security", headers=srv.headers(tenant=B, roles=["admin"])).json()
    assert sec["events"][-1]["type"] == "security.cross-tenant-write"
    assert sec["events"][-1]["data"]["user"] == "eve"


def test_super_admin_needs_justification_and_is_audited(srv):
    seed_tenant_a(srv)
    root = srv.headers(tenant="platform", user="root", roles=["super-admin"])
    with httpx.Client(base_url=srv.url) as c:
        r = c.get("/v1/streams/secret/1", headers={**root, "X-Tenant": A})
        assert r.status_code == 403 and r.json()["code"] == "justification_required"
        r = c.get("/v1/streams/secret/1", headers={**root, "X-Tenant": A, "X-Justification": "ticket 42"})
        assert r.status_code == 200 and r.json()["events"][0]["data"] == {"s": "A-only"}
        # writes stay refused even for super-admins
        r = c.post("/v1/streams/secret/1", json={"events": [{"type": "note.added"}]}, headers={**root, "X-Tenant": A})
        assert r.status_code == 403
        audit = c.get("/v1/streams/$audit", headers=srv.headers(tenant=A, roles=["admin"])).json()["events"]
        reads = [e for e in audit if e["type"] == "audit.cross-tenant-read"]
        assert len(reads) == 1
        assert reads[0]["data"]["justification"] == "ticket 42"
        assert reads[0]["data"]["by"] == {"user": "root", "tenant": "platform"}
        assert reads[0]["retention"] == "critical"


# message types that may carry a tenant field
WS_MESSAGES = [
    (P.SUB, {"id": "s", "prefixes": ["secret/"], "after": 0}),
    (P.JOIN, {"room": "lobby"}),
    (P.SAY, {"room": "lobby", "data": 1}),
    (P.DM, {"to": "alice", "data": 1}),
    (P.PRESENCE, {"room": "lobby", "state": {"typing": True}}),
    (P.OPS, {"id": "o", "ops": []}),
    (P.SNAP, {"id": "n", "prefixes": ["secret/"]}),
    (P.PING, {}),
    (P.HELLO, {"client": "x"}),
    (P.ACK, {"sub": "s", "upto": 1}),
    (P.UNSUB, {"id": "s"}),
    (P.LEAVE, {"room": "lobby"}),
]


@pytest.mark.parametrize("t,fields", WS_MESSAGES, ids=[t for t, _ in WS_MESSAGES])
async def test_ws_message_naming_another_tenant_closes_4403(srv, t, fields):
    cl = await NativeClient.connect(srv.ws_url, srv.token(tenant=B, user="eve"))
    await cl.expect(P.WELCOME)
    await cl.send(t, tenant=A, **fields)
    code, seen = await cl.closed()
    assert code == 4403
    assert any(m["t"] == P.ERROR and m["code"] == "tenant_violation" for m in seen)


async def test_ws_other_tenant_sees_no_events_rooms_or_dms(srv):
    seed_tenant_a(srv)
    eve = await NativeClient.connect(srv.ws_url, srv.token(tenant=B, user="alice"))  # same user id, other tenant
    alice = await NativeClient.connect(srv.ws_url, srv.token(tenant=A, user="alice"))
    bob = await NativeClient.connect(srv.ws_url, srv.token(tenant=A, user="bob"))
    for c in (eve, alice, bob):
        await c.expect(P.WELCOME)
    for c in (eve, alice):
        await c.send(P.JOIN, room="lobby")
        await c.expect(P.JOINED)
    await eve.send(P.SUB, id="s", after=0)
    await bob.send(P.DM, to="alice", data="for acme's alice")
    await alice.send(P.SAY, room="lobby", data="acme room")
    assert (await alice.expect(P.MSG))["data"] == "for acme's alice"
    # eve (tenant B) gets none of it; she sees only her own tenant's log (her join event)
    got = []
    try:
        async with asyncio.timeout(0.7):
            while True:
                got.append(await eve.recv())
    except TimeoutError:
        pass
    assert all(m["t"] == P.EVENTS for m in got), got
    evs = [e for m in got for e in m["events"]]
    assert evs and all(e["tenant"] == B for e in evs)
    assert "A-only" not in json.dumps(got, default=str)
    for c in (eve, alice, bob):
        await c.close()


@pytest.mark.parametrize("endpoint", ["/v1/ws", "/v1/yjs/d1"])
async def test_ws_connect_naming_another_tenant_is_refused(srv, endpoint):
    assert await ws_close_code(f"{srv.ws_url}{endpoint}?token={srv.token(tenant=B)}&tenant={A}") == 4403
