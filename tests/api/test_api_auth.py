"""Every refusal case, per route and for both WebSocket endpoints."""
from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest
from api_support import SECRET, make_token
from api_wsclient import ws_close_code

ROUTES = [
    ("GET", "/v1/log", None),
    ("GET", "/v1/streams/feed/1", None),
    ("POST", "/v1/streams/feed/1", {"events": [{"type": "note.added", "data": {"x": 1}}]}),
    ("GET", "/v1/events/poll?after=0", None),
    ("GET", "/api/events/poll?after=0", None),
    ("GET", "/v1/deltas?after=0", None),
    ("GET", "/v1/sync/deltas?prefix=feed/", None),
    ("GET", "/v1/snapshots?prefix=feed/", None),
    ("GET", "/v1/docs/d1", None),
    ("GET", "/v1/docs/d1/diff", None),
    ("GET", "/v1/docs/d1/snapshot", None),
    ("GET", "/v1/records/notes/1", None),
    ("POST", "/v1/commands/order.placed", {"amount": 5}),
    ("GET", f"/v1/commands/{uuid.uuid4()}", None),
    ("GET", "/v1/rooms/r1/presence", None),
    ("POST", "/v1/ops", {"ops": []}),
    ("GET", "/v1/conflicts", None),
]
ADMIN_ROUTES = [
    ("GET", "/v1/bus/groups", None),
    ("GET", "/v1/bus/dead-letters", None),
    ("GET", "/v1/bus/dead-letters/nope", None),
    ("PUT", "/v1/bus/dead-letters/nope", {"data": 1}),
    ("POST", "/v1/bus/dead-letters/nope/requeue", None),
    ("POST", "/v1/bus/dead-letters/nope/discard", {"reason": "x"}),
]
WRITE_ROUTES = [r for r in ROUTES if r[0] == "POST"]


def _bad_tokens() -> list[tuple[str, dict[str, str], str]]:
    now = int(time.time())
    return [
        ("missing", {}, "token_missing"),
        ("expired", {"Authorization": f"Bearer {make_token(ttl_s=-3600)}"}, "token_expired"),
        ("bad_signature", {"Authorization": f"Bearer {make_token(secret='not-the-secret-xxxxxxxxxxxxxxxxxxxx')}"},
         "token_bad_signature"),
        ("malformed", {"Authorization": "Bearer not.a.jwt"}, "token_malformed"),
        ("garbage", {"Authorization": "Bearer %%%"}, "token_malformed"),
        ("wrong_scheme", {"Authorization": "Basic YWxpY2U6cHc="}, "token_malformed"),
        ("no_tenant_claim", {"Authorization": "Bearer " + jwt.encode({"sub": "a", "exp": now + 60}, SECRET,
                                                                      algorithm="HS256")}, "token_malformed"),
        ("bad_tenant_claim", {"Authorization": "Bearer " + jwt.encode(
            {"sub": "a", "tenant": "../x", "exp": now + 60}, SECRET, algorithm="HS256")}, "token_malformed"),
        ("alg_none", {"Authorization": "Bearer " + jwt.encode({"sub": "a", "tenant": "acme", "exp": now + 60}, None,
                                                              algorithm="none")}, "token_bad_signature"),
    ]


def _request(c: httpx.Client, method: str, path: str, body, headers: dict[str, str]) -> httpx.Response:
    headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    return c.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_refuses_bad_tokens(srv, method, path, body):
    with httpx.Client(base_url=srv.url) as c:
        for case, headers, code in _bad_tokens():
            r = _request(c, method, path, body, headers)
            assert r.status_code == 401, (case, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["code"] == code, case
        # a token whose roles grant nothing is authenticated but forbidden
        r = _request(c, method, path, body, srv.headers(roles=["nobody"]))
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        # and a good token passes auth
        r = _request(c, method, path, body, srv.headers())
        assert r.status_code not in (401, 403), r.text


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_refuse_bad_tokens_and_non_admins(srv, method, path, body):
    with httpx.Client(base_url=srv.url) as c:
        for case, headers, code in _bad_tokens():
            r = _request(c, method, path, body, headers)
            assert r.status_code == 401 and r.json()["code"] == code, case
        r = _request(c, method, path, body, srv.headers())  # a member, not an admin
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = _request(c, method, path, body, srv.headers(roles=["admin"]))
        assert r.status_code in (200, 404), r.text
        assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("method,path,body", WRITE_ROUTES, ids=[f"{m} {p}" for m, p, _ in WRITE_ROUTES])
def test_read_only_tokens_cannot_write(srv, method, path, body):
    with httpx.Client(base_url=srv.url) as c:
        r = _request(c, method, path, body, srv.headers(roles=["viewer"]))
        assert r.status_code == 403
        assert r.json() == {"code": "forbidden", "message": "the token lacks the 'write' permission",
                            "details": {"needed": "write"}}
        # explicit perms in the token grant too
        r = _request(c, method, path, body, srv.headers(roles=[], perms=["read", "write"]))
        assert r.status_code not in (401, 403)


@pytest.mark.parametrize("endpoint", ["/v1/ws", "/v1/yjs/doc1"])
async def test_websockets_close_4401_on_bad_tokens(srv, endpoint):
    base = srv.ws_url + endpoint
    for case, headers, _code in _bad_tokens():
        if case == "missing":
            assert await ws_close_code(base) == 4401, case
            continue
        value = headers["Authorization"]
        # in the Authorization header...
        assert await ws_close_code(base, additional_headers=headers) == 4401, case
        # ...and in ?token= (only for bearer tokens)
        if value.startswith("Bearer "):
            assert await ws_close_code(f"{base}?token={value[7:]}") == 4401, case
    # no permission at all: 4403
    assert await ws_close_code(f"{base}?token={make_token(roles=['nobody'])}") == 4403
    # a good token stays open
    assert await ws_close_code(f"{base}?token={make_token()}", wait_s=0.3) is None
