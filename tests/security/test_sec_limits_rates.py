"""Issue 15, item 4: REST and Yjs have rates, connections have a handshake bound and a
heartbeat, and with Redis the windows (and bans) are shared by every gateway.

Real ``syncline serve`` processes; the Redis one uses the suite's real Redis
(``SYNCLINE_TEST_REDIS_URL``).
"""
from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from sec_limits_support import RawWs, token

pytestmark = pytest.mark.slow


def auth(user: str = "alice", **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, **kw)}"}


def test_rest_requests_have_a_rate_per_user_and_per_address(serve):
    srv = serve(rest_rate_requests=20, rest_rate_window_s=60)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        codes = [http.get("/v1/log", headers=auth()).status_code for _ in range(25)]
        assert codes[:20] == [200] * 20 and codes[20:] == [429] * 5
        r = http.get("/v1/log", headers=auth())
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["details"]["limit"] == 20
        assert http.get("/v1/log", headers=auth("bob")).status_code == 200  # another user: their own window
        assert http.get("/healthz").status_code == 200  # health and metrics are never limited
        # without a valid token the client's address is the key (then 401s stop at the limit too)
        codes = [http.get("/v1/log").status_code for _ in range(25)]
        assert codes[:20] == [401] * 20 and codes[20:] == [429] * 5
    assert srv.metric("syncline_limits_hit_total", limit="rest_rate") == 11
    assert srv.metric("syncline_rate_limited_total", action="rest") == 11


def test_rest_windows_are_shared_by_gateways_through_redis(serve, redis_client_url):
    a = serve(rest_rate_requests=20, rest_rate_window_s=60, redis_url=redis_client_url)
    b = serve(rest_rate_requests=20, rest_rate_window_s=60, redis_url=redis_client_url)
    codes = []
    for i in range(24):  # alternating gateways: one window between them
        g = (a, b)[i % 2]
        codes.append(httpx.get(f"{g.url}/v1/log", headers=auth("carol"), timeout=10).status_code)
    assert codes[:20] == [200] * 20 and codes[20:] == [429] * 4
    assert a.metric("syncline_limits_hit_total", limit="rest_rate") == 2
    assert b.metric("syncline_limits_hit_total", limit="rest_rate") == 2
    # without Redis each gateway would have allowed 20 of its own
    c = serve(rest_rate_requests=20, rest_rate_window_s=60)
    assert httpx.get(f"{c.url}/v1/log", headers=auth("carol"), timeout=10).status_code == 200


async def test_yjs_bans_are_shared_by_gateways_through_redis(serve, redis_client_url):
    common = dict(redis_url=redis_client_url, yjs_rate_messages_per_s=1, yjs_rate_messages_burst=20,
                  rate_limit_ban_s=30)
    a, b = serve(**common), serve(**common)
    async with websockets.connect(f"{a.ws}/v1/yjs/doc?token={token('dave')}", compression=None) as ws:
        await ws.recv()
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(100):
                await ws.send(b"\x03")  # awareness queries: cheap, and counted
            while True:  # (each is answered, until the close)
                await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4429
    for g in (a, b):
        with pytest.raises(websockets.ConnectionClosed) as e:
            async with websockets.connect(f"{g.ws}/v1/yjs/doc?token={token('dave')}") as ws2:
                await asyncio.wait_for(ws2.recv(), 10)
        assert e.value.rcvd.code == 4429


async def test_yjs_sockets_get_the_heartbeat(serve):
    srv = serve(ws_ping_interval_s=0.3, ws_idle_timeout_s=1.0)
    # a peer that never answers pings (nor sends anything): closed 4408
    raw = await RawWs.connect(srv.port, f"/v1/yjs/hb?token={token()}")
    pings = 0
    while raw.close_code is None:
        opcode, _ = await raw.recv(5)
        pings += opcode == 9
    assert pings >= 1 and raw.close_code == 4408
    raw.abort()
    # a y-websocket peer answers pings (browsers and websockets do): it stays
    async with websockets.connect(f"{srv.ws}/v1/yjs/hb?token={token()}", ping_interval=None,
                                  compression=None) as ws:
        await ws.recv()
        await asyncio.sleep(2.0)
        await ws.send(b"\x03")  # query awareness: answered
        assert await asyncio.wait_for(ws.recv(), 5)
    assert srv.metric("syncline_ws_transport_limits_total", limit="idle_timeout") == 1
