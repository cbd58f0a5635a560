"""The presence port, one suite for both adapters: in memory (``PresenceRegistry``) and
Redis (``RedisPresence``, the cross-gateway mirror).

The two are written to differently (the registry tracks connections and joins; the
mirror is told which members a gateway holds), so each gets a thin driver with the
same four verbs. What a room looks like afterwards must be the same, in the same
shape (``{room, members: [{user, client, online}], states: [{user, conn, state,
ttl_s}]}``): that is what ``joined`` and ``GET /v1/rooms/{room}/presence`` serve.
"""
from __future__ import annotations

import time

import pytest

from syncline.api.presence import PresenceRegistry
from syncline.api.presence_redis import SEP, RedisPresence

TTL_S = 0.6


class MemoryDriver:
    def __init__(self) -> None:
        self.p = PresenceRegistry(ttl_s=TTL_S, grace_s=60)

    async def join(self, room: str, user: str, client: str, conn: str) -> None:
        self.p.attach(("acme", user, client), conn)
        self.p.join(("acme", user, client), room)

    async def disconnect(self, user: str, client: str, conn: str) -> None:
        self.p.detach(("acme", user, client), conn, time.monotonic())

    async def leave(self, room: str, user: str, client: str) -> None:
        self.p.leave(("acme", user, client), room)

    async def set_state(self, room: str, user: str, conn: str, state) -> None:
        self.p.set_state("acme", room, user, conn, state, time.monotonic())

    async def snapshot(self, room: str) -> dict:
        return self.p.snapshot("acme", room, time.monotonic())

    async def close(self) -> None:
        pass


class RedisDriver:
    def __init__(self, url: str) -> None:
        self.p = RedisPresence(url, ttl_s=TTL_S, grace_s=60, online_s=60)
        self.online: dict[tuple[str, str, str], bool] = {}

    async def join(self, room: str, user: str, client: str, conn: str) -> None:
        self.online[(room, user, client)] = True
        await self.p.touch([("acme", room, user, client, True)])

    async def disconnect(self, user: str, client: str, conn: str) -> None:
        # The gateway's next touch reports the member without a connection; the online
        # mark then lapses (here: removed, as at the end of its ``online_s``).
        for (room, u, c) in list(self.online):
            if (u, c) == (user, client):
                await self.p.redis.zrem(f"syncline:presence:acme:{room}:o", f"{user}{SEP}{client}")
                await self.p.touch([("acme", room, user, client, False)])

    async def leave(self, room: str, user: str, client: str) -> None:
        self.online.pop((room, user, client), None)
        await self.p.left("acme", room, user, client)

    async def set_state(self, room: str, user: str, conn: str, state) -> None:
        await self.p.state("acme", room, user, conn, state)

    async def snapshot(self, room: str) -> dict:
        return await self.p.snapshot("acme", room)

    async def close(self) -> None:
        await self.p.close()


@pytest.fixture(params=["memory", "redis"])
async def presence(request):
    d = MemoryDriver() if request.param == "memory" else RedisDriver(request.getfixturevalue("redis_client_url"))
    yield d
    await d.close()


def members(snap: dict) -> list[tuple[str, str, bool]]:
    return sorted((m["user"], m["client"], m["online"]) for m in snap["members"])


async def test_members_and_their_connection(presence):
    await presence.join("lobby", "alice", "a1", "conn-a")
    await presence.join("lobby", "bob", "b1", "conn-b")
    snap = await presence.snapshot("lobby")
    assert snap["room"] == "lobby"
    assert members(snap) == [("alice", "a1", True), ("bob", "b1", True)]
    await presence.disconnect("bob", "b1", "conn-b")  # away, still a member (grace period)
    assert members(await presence.snapshot("lobby")) == [("alice", "a1", True), ("bob", "b1", False)]
    await presence.leave("lobby", "alice", "a1")
    assert members(await presence.snapshot("lobby")) == [("bob", "b1", False)]
    assert members(await presence.snapshot("other-room")) == []


async def test_ephemeral_states_expire_and_clear(presence):
    await presence.join("lobby", "alice", "a1", "conn-a")
    await presence.set_state("lobby", "alice", "conn-a", {"typing": True})
    states = (await presence.snapshot("lobby"))["states"]
    assert [(s["user"], s["conn"], s["state"]) for s in states] == [("alice", "conn-a", {"typing": True})]
    assert 0 < states[0]["ttl_s"] <= TTL_S
    await presence.set_state("lobby", "alice", "conn-a", None)
    assert (await presence.snapshot("lobby"))["states"] == []
    await presence.set_state("lobby", "alice", "conn-a", {"cursor": 3})
    time.sleep(TTL_S + 0.1)
    assert (await presence.snapshot("lobby"))["states"] == []
