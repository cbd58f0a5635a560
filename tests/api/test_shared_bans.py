"""Rate-limit bans shared through Redis: a user disconnected for flooding on one gateway
is refused by another gateway on the same Redis for the length of the ban; without
Redis (or with Redis unreachable) the ban stays in-process and the fallback is counted."""
from __future__ import annotations

import asyncio
import socket

import httpx
import redis
import websockets
from api_wsclient import NativeClient
from waiting import until

from syncline.api.ratelimit import BanList, SharedBanList, ban_key
from syncline.engine import protocol as P

LIMITS = {"rate_limit_messages": 5, "rate_limit_window_s": 60, "rate_limit_ban_s": 30}


async def flood_until_banned(g, user: str = "alice") -> None:
    cl = await NativeClient.connect(g.ws_url, g.token(user=user))
    await cl.expect(P.WELCOME)
    for i in range(5):  # (application messages: pings are never counted)
        await cl.send(P.LEAVE, room=f"r{i}")
        assert (await cl.expect(P.LEFT))["room"] == f"r{i}"
    await cl.send(P.LEAVE, room="r99")
    assert (await cl.expect(P.WARN))["code"] == "rate_limited"
    await cl.send(P.LEAVE, room="r100")
    code, seen = await cl.closed()
    assert code == P.CLOSE_RATE_LIMITED and seen[-1]["code"] == "rate_limited"


async def close_code(g, user: str) -> int | None:
    """The close code a new connection of ``user`` gets; None when it is welcomed."""
    cl = await NativeClient.connect(g.ws_url, g.token(user=user))
    try:
        first = await cl.recv()
    except websockets.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
    assert first["t"] == P.WELCOME
    await cl.close()
    return None



async def test_ban_on_one_gateway_is_refused_on_another(gateway, redis_client_url, tmp_path):
    g1 = gateway(redis_url=redis_client_url, **LIMITS)
    g2 = gateway(redis_url=redis_client_url, **LIMITS)
    assert isinstance(g1.gw.bans, SharedBanList)
    await flood_until_banned(g1)
    r = redis.Redis.from_url(redis_client_url)
    try:
        key = ban_key(("acme", "alice"))
        await until(lambda: r.exists(key), 5, "the ban to be recorded in Redis")
        assert 25_000 < r.pttl(key) <= 30_000
    finally:
        r.close()
    assert await close_code(g2, "alice") == P.CLOSE_RATE_LIMITED  # refused on the other gateway
    assert await close_code(g1, "alice") == P.CLOSE_RATE_LIMITED  # and on the first, of course
    assert await close_code(g2, "bob") is None  # other users are welcome
    # another tenant's alice is another user
    cl = await NativeClient.connect(g2.ws_url, g2.token(tenant="other", user="alice"))
    await cl.expect(P.WELCOME)
    await cl.close()
    text = (await asyncio.to_thread(httpx.get, f"{g2.url}/metrics")).text
    assert 'syncline_ban_redis_fallback_total{op="check"}' not in text or \
        'syncline_ban_redis_fallback_total{op="check"} 0.0' in text


async def test_shared_ban_expires_everywhere(gateway, redis_client_url):
    limits = {**LIMITS, "rate_limit_ban_s": 1.0}
    g1 = gateway(redis_url=redis_client_url, **limits)
    g2 = gateway(redis_url=redis_client_url, **limits)
    await flood_until_banned(g1)
    r = redis.Redis.from_url(redis_client_url)
    try:
        await until(lambda: r.exists(ban_key(("acme", "alice"))), 5, "the ban to be recorded in Redis")
    finally:
        r.close()
    assert await close_code(g2, "alice") == P.CLOSE_RATE_LIMITED
    await asyncio.sleep(1.2)
    assert await close_code(g2, "alice") is None
    assert await close_code(g1, "alice") is None


async def test_unreachable_redis_falls_back_to_the_local_list(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once closed
    g = gateway(redis_url=f"redis://127.0.0.1:{dead}/0", **LIMITS)
    await flood_until_banned(g)
    assert await close_code(g, "alice") == P.CLOSE_RATE_LIMITED  # the local ban holds
    assert await close_code(g, "bob") is None  # Redis unreachable: the check falls back, bob is welcome
    bans = g.gw.bans
    await until(lambda: bans.fallbacks["record"] > 0 and bans.fallbacks["check"] > 0, 5, "fallbacks counted")
    text = (await asyncio.to_thread(httpx.get, f"{g.url}/metrics")).text
    assert 'syncline_ban_redis_fallback_total{op="check"}' in text
    assert 'syncline_ban_redis_fallback_total{op="record"}' in text


def test_without_redis_bans_stay_in_process(gateway):
    g = gateway(**LIMITS)
    assert type(g.gw.bans) is BanList


def test_ban_keys_are_namespaced_and_unambiguous():
    assert ban_key(("acme", "alice")) == "syncline:ban:acme:alice"
    assert ban_key(("a:b", "c")) != ban_key(("a", "b:c"))
