"""Issue 15, item 5, against a real gateway on real sockets: sessions end at their token's
``exp`` (4401 token_expired) unless refreshed in-band with ``auth``; Yjs sockets close at
``exp``; revocation by ``jti`` and by user + time refuses the tokens and closes their
sessions; the admin route is admin-only and audited."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
from sec_tokens_support import NativeClient, RunningGateway, base_settings, exp_in, make_token, token
from waiting import until

from syncline.engine.yprotocol import encode_sync_update


@pytest.fixture
def gw(tmp_path):
    g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/tok.db", jwt_leeway_s=0.0)).start()
    yield g
    g.stop()


def _metric(g: RunningGateway, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{g.url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_auth_refreshes_in_band_and_the_session_outlives_the_first_token(gw):
    exp = exp_in(1.5)
    c = await NativeClient.connect(gw.ws_url, token(exp=exp))
    await c.expect("welcome")
    later = exp_in(600)
    await c.send("auth", id="r1", token=token(exp=later))
    authed = await c.expect("authed")
    assert authed == {"t": "authed", "id": "r1", "exp": later}
    await until(lambda: time.time() > exp + 0.5, exp - time.time() + 2, "the first token to expire")
    await c.send("ping", id="p")
    assert (await c.expect("pong"))["id"] == "p"
    # Events still flow after the first token's expiry
    await c.send("sub", id="s", prefixes=["feed/"])
    r = httpx.post(f"{gw.url}/v1/streams/feed/1", json={"events": [{"type": "note.added"}]},
                   headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 201
    assert (await c.expect("events", timeout=10))["events"][0]["type"] == "note.added"
    await c.close()


async def test_sessions_end_at_exp_and_refused_refreshes_change_nothing(gw):
    """Three connections with one ``exp``, watched at once: a subscribed native one, a native
    one whose refreshes are all refused (other user, other tenant, bad signature, garbage),
    and a Yjs socket. Each is closed with 4401 token_expired at ``exp``, not before."""
    exp = exp_in(1.5)
    plain = await NativeClient.connect(gw.ws_url, token(exp=exp))
    await plain.expect("welcome")
    await plain.send("sub", id="s", prefixes=["feed/"])
    c = await NativeClient.connect(gw.ws_url, token(exp=exp))
    await c.expect("welcome")
    ydoc = await websockets.connect(f"{gw.ws_url}/v1/yjs/notes?token={token(exp=exp)}", ping_interval=None)
    await c.send("auth", id="r1", token=token("mallory", exp=exp_in(600)))
    err = await c.expect("error")
    assert (err["code"], err["ref"]) == ("token_subject_mismatch", "r1")
    await c.send("auth", id="r2", token=token(tenant="globex", exp=exp_in(600)))
    assert (await c.expect("error"))["code"] == "token_subject_mismatch"
    await c.send("auth", id="r3", token=token(exp=exp_in(600), secret="another-secret-0123456789abcdef-xyz"))
    assert (await c.expect("error"))["code"] == "token_bad_signature"
    await c.send("auth", id="r4", token="not-a-jwt")
    assert (await c.expect("error"))["code"] == "token_malformed"

    async def native_close(client: NativeClient) -> tuple[int | None, str, float]:
        code, seen = await client.closed(timeout=exp - time.time() + 3)
        return code, seen[-1]["code"], time.time()

    async def yjs_close() -> tuple[int | None, str, float]:
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(exp - time.time() + 3):
                while True:
                    await ydoc.recv()
        return info.value.rcvd.code, info.value.rcvd.reason, time.time()

    closes = await asyncio.gather(native_close(plain), native_close(c), yjs_close())
    for code, reason, at in closes:
        assert (code, reason) == (4401, "token_expired")
        assert exp - 0.05 <= at <= exp + 1.0, (exp, at)
    assert _metric(gw, 'syncline_auth_refreshes_total{outcome="refused"}') == 2
    assert _metric(gw, "syncline_token_expired_sessions_total") == 3


async def test_a_yjs_write_after_exp_never_reaches_the_log(gw):
    """Even if the expiry task has not run yet (stopped here), an update after ``exp`` is
    refused with 4401 and not appended."""
    exp = exp_in(1.2)
    gw.call(gw.gw.expiry.close())  # only the per-update check is left
    import pycrdt

    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    text += "late"
    url = f"{gw.ws_url}/v1/yjs/late?token={token(exp=exp)}"
    async with websockets.connect(url, ping_interval=None) as ws:
        await ws.recv()
        await until(lambda: time.time() > exp + 0.1, 5, "the token to expire")
        await ws.send(encode_sync_update(updates[0]))
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert info.value.rcvd.code == 4401
    admin = {"Authorization": f"Bearer {token('root', roles=('admin',))}"}
    r = httpx.get(f"{gw.url}/v1/streams/doc/late", headers=admin)
    assert r.status_code in (200, 404) and not (r.status_code == 200 and r.json()["events"])


async def test_revoking_a_jti_refuses_the_token_and_closes_its_sessions(gw):
    victim, other = token(jti="victim-1"), token(jti="other-1")
    native = await NativeClient.connect(gw.ws_url, victim)
    await native.expect("welcome")
    bystander = await NativeClient.connect(gw.ws_url, other)
    await bystander.expect("welcome")
    ydoc = await websockets.connect(f"{gw.ws_url}/v1/yjs/d1?token={victim}", ping_interval=None)
    await ydoc.recv()
    admin = {"Authorization": f"Bearer {token('root', roles=('admin',))}"}
    member = {"Authorization": f"Bearer {token('bob')}"}
    assert httpx.post(f"{gw.url}/v1/admin/revocations", json={"jti": "victim-1"}, headers=member).status_code == 403
    for bad in ({}, {"jti": ""}, {"jti": "x", "user": "u"}, {"user": "u", "before": "yesterday"}, {"jti": 5}):
        r = httpx.post(f"{gw.url}/v1/admin/revocations", json=bad, headers=admin)
        assert r.status_code == 400, (bad, r.text)
    r = httpx.post(f"{gw.url}/v1/admin/revocations", json={"jti": "victim-1", "reason": "laptop stolen"},
                   headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["revoked"] == {"jti": "victim-1"}
    code, seen = await native.closed(timeout=3)
    assert code == 4401 and seen[-1]["code"] == "token_revoked"
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(3):
            while True:
                await ydoc.recv()
    assert info.value.rcvd.code == 4401 and info.value.rcvd.reason == "token_revoked"
    # refused everywhere from now on, the other token works
    again = await NativeClient.connect(gw.ws_url, victim)
    code, _ = await again.closed(timeout=3)
    assert code == 4401
    rest = httpx.get(f"{gw.url}/v1/log", headers={"Authorization": f"Bearer {victim}"})
    assert rest.status_code == 401 and rest.json()["code"] == "token_revoked"
    assert httpx.get(f"{gw.url}/v1/log", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    await bystander.send("ping", id="p")
    assert (await bystander.expect("pong"))["id"] == "p"
    # recorded in the log (critical) and audited
    log = httpx.get(f"{gw.url}/v1/streams/$revocations", headers=admin).json()["events"]
    assert [(e["type"], e["data"]["jti"], e["retention"]) for e in log] == [("token.revoked", "victim-1", "critical")]
    audit = httpx.get(f"{gw.url}/v1/streams/$audit", headers=admin).json()["events"]
    assert [e["type"] for e in audit] == ["audit.token-revoked"]
    assert _metric(gw, "syncline_revoked_sessions_total") == 2
    await bystander.close()


async def test_revoking_a_user_before_t_spares_later_tokens_and_other_users(gw):
    t0 = time.time()
    old = token(iat=t0 - 60)
    no_iat = make_token(jti="no-iat")  # (no iat claim)
    bob = token("bob", iat=t0 - 60)
    c = await NativeClient.connect(gw.ws_url, old)
    await c.expect("welcome")
    admin = {"Authorization": f"Bearer {token('root', roles=('admin',))}"}
    r = httpx.post(f"{gw.url}/v1/admin/revocations", json={"user": "alice", "before": t0 - 10}, headers=admin)
    assert r.status_code == 201, r.text
    code, seen = await c.closed(timeout=3)
    assert code == 4401 and seen[-1]["code"] == "token_revoked"

    def status(tok: str) -> int:
        return httpx.get(f"{gw.url}/v1/log", headers={"Authorization": f"Bearer {tok}"}).status_code

    assert status(old) == 401
    assert status(no_iat) == 401  # cannot show it is newer
    assert status(token(iat=t0)) == 200  # issued after the cut-off
    assert status(bob) == 200
    # without "before": every token issued until now
    r = httpx.post(f"{gw.url}/v1/admin/revocations", json={"user": "alice"}, headers=admin)
    assert r.status_code == 201 and r.json()["revoked"]["before"] >= t0
    assert status(token(iat=t0)) == 401


async def test_revocations_survive_a_restart(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/restart.db"
    tok = token(jti="gone")
    g = RunningGateway(base_settings(db)).start()
    try:
        admin = {"Authorization": f"Bearer {token('root', roles=('admin',))}"}
        assert httpx.post(f"{g.url}/v1/admin/revocations", json={"jti": "gone"}, headers=admin).status_code == 201
        other = {"Authorization": f"Bearer {token(tenant='globex')}"}  # a tenant without revocations
        assert httpx.post(f"{g.url}/v1/streams/feed/1", json={"events": [{"type": "note.added"}]},
                          headers=other).status_code == 201
    finally:
        g.stop()
    g = RunningGateway(base_settings(db)).start()
    try:
        r = httpx.get(f"{g.url}/v1/log", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 401 and r.json()["code"] == "token_revoked"
        assert httpx.get(f"{g.url}/v1/log", headers={"Authorization": f"Bearer {token()}"}).status_code == 200
    finally:
        g.stop()


def test_the_revocation_fold():
    from syncline.api.auth import Principal
    from syncline.api.revocations import Revocation, Revocations, revocation_from
    from syncline.engine.errors import ValidationError

    r = Revocations()
    p = Principal("alice", "acme", frozenset(), frozenset(), exp=0, jti="j1", iat=100.0)
    assert not r.revoked(p)
    assert r.add(revocation_from("acme", {"jti": "j1"})) and not r.add(Revocation("acme", jti="j1"))
    assert r.revoked(p)
    assert not r.revoked(Principal("alice", "globex", frozenset(), frozenset(), exp=0, jti="j1", iat=100.0))
    assert r.add(Revocation("acme", user="bob", before=50.0))
    assert not r.add(Revocation("acme", user="bob", before=40.0))  # an earlier cut-off adds nothing
    assert r.add(Revocation("acme", user="bob", before=150.0))
    bob = Principal("bob", "acme", frozenset(), frozenset(), exp=0, jti="x", iat=149.0)
    assert r.revoked(bob) and not r.revoked(Principal("bob", "acme", frozenset(), frozenset(), exp=0, iat=150.0))
    assert r.applied == 3
    for bad in ([], {"jti": "a", "before": 1}, {"user": "u", "before": True}, {"user": "", "before": 1},
                {"user": "u", "before": -1}, {"jti": "x" * 201}):
        with pytest.raises(ValidationError):
            revocation_from("acme", bad)
