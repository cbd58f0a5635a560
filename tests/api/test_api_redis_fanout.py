"""Two gateway processes' worth of hubs sharing Redis: rooms, direct messages and Yjs
updates cross between them; the log (one shared database) stays the truth."""
from __future__ import annotations

import asyncio

import httpx
import pycrdt
import pytest
from api_wsclient import NativeClient
from test_api_yjs import texts, wait_until, yclient
from waiting import until, wait_for

from syncline.engine import protocol as P


def wait_redis_up(g) -> None:
    wait_for(lambda: httpx.get(f"{g.url}/readyz").json()["dependencies"]["redis"]["state"] == "up", 10,
             "the hub to connect to Redis")


async def test_rooms_dms_and_yjs_cross_gateways(gateway, redis_client_url, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    g1 = gateway(database_url=db, redis_url=redis_client_url)
    g2 = gateway(database_url=db, redis_url=redis_client_url)
    wait_redis_up(g1)
    wait_redis_up(g2)
    a = await NativeClient.connect(g1.ws_url, g1.token(user="alice"))
    b = await NativeClient.connect(g2.ws_url, g2.token(user="bob"))
    for c in (a, b):
        await c.expect(P.WELCOME)
        await c.send(P.JOIN, room="lobby")
        await c.expect(P.JOINED)
    await a.send(P.SAY, room="lobby", data="across")
    pos = (await a.expect(P.SENT))["pos"]
    got = await b.expect(P.MSG)
    assert got["data"] == "across" and got["pos"] == pos
    await b.send(P.DM, to="alice", data="back")
    pos = (await b.expect(P.SENT))["pos"]
    got = await a.expect(P.MSG)
    assert got["data"] == "back" and got["pos"] == pos
    # each message arrived once: by Redis or from the log, not both
    with pytest.raises(asyncio.TimeoutError):
        extra = await a.recv(timeout=1.0)
        assert extra["t"] == "presence", extra
        await a.recv(timeout=1.0)
    for c in (a, b):
        await c.close()
    d1, d2 = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(g1, "x", d1), yclient(g2, "x", d2):
        d1.get("text", type=pycrdt.Text).insert(0, "one")
        await wait_until(lambda: texts(d2) == "one")
        d2.get("text", type=pycrdt.Text).insert(3, " two")
        await wait_until(lambda: texts(d1) == "one two")


async def test_room_presence_is_shared_through_redis(gateway, redis_client_url, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    g1 = gateway(database_url=db, redis_url=redis_client_url, presence_ttl_s=2)
    g2 = gateway(database_url=db, redis_url=redis_client_url, presence_ttl_s=2)
    a = await NativeClient.connect(g1.ws_url, g1.token(user="alice"), query="client=a1")
    b = await NativeClient.connect(g2.ws_url, g2.token(user="bob"), query="client=b1")
    for c in (a, b):
        await c.expect(P.WELCOME)
        await c.send(P.JOIN, room="lobby")
        await c.expect(P.JOINED)
    await b.send(P.PRESENCE, room="lobby", state={"typing": True})
    def both_with_state():
        view = httpx.get(f"{g1.url}/v1/rooms/lobby/presence", headers=g1.headers()).json()
        return view if len(view["members"]) == 2 and view["states"] else None

    view = await until(both_with_state, 5, "bob's member entry and state at gateway 1")
    assert {(m["user"], m["client"]) for m in view["members"]} == {("alice", "a1"), ("bob", "b1")}
    assert view["states"][0]["user"] == "bob" and view["states"][0]["state"] == {"typing": True}
    await b.send(P.LEAVE, room="lobby")
    await b.expect(P.LEFT)

    def members() -> list[str]:
        presence = httpx.get(f"{g1.url}/v1/rooms/lobby/presence", headers=g1.headers()).json()
        return [m["user"] for m in presence["members"]]

    await wait_until(lambda: members() == ["alice"])
    for c in (a, b):
        await c.close()
