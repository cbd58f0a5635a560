"""Presence in Redis, so every gateway sees every member of a room (docs/design.md, "Scale-out topology").

Per (tenant, room), three sorted sets scored by expiry time (wall clock, seconds) and a hash:

    syncline:presence:{tenant}:{room}:m    member "user\\x00client"; expires after the grace period
    syncline:presence:{tenant}:{room}:o    same members while a connection is open (short expiry)
    syncline:presence:{tenant}:{room}:s    ephemeral states by connection id (TTL)
    syncline:presence:{tenant}:{room}:sd   connection id -> JSON {user, conn, state}

Each gateway refreshes the entries of its own connections from its sweeper; entries of a
gateway that died simply expire. Every call is best effort: when Redis is down the
in-process registry still answers for local connections (``/readyz`` reports the
degradation), and join/leave history is in the log regardless.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

from .logging import log

SEP = "\x00"


def _key(tenant: str, room: str, part: str) -> str:
    return f"syncline:presence:{tenant}:{room}:{part}"


class RedisPresence:
    def __init__(self, url: str, *, ttl_s: float, grace_s: float, online_s: float) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self.online_s = online_s
        self.ok = True

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except Exception:
            pass

    async def _run(self, what: str, coro) -> Any:
        try:
            result = await coro
            self.ok = True
            return result
        except Exception as e:
            if self.ok:
                log.warning("presence.redis_unavailable", op=what, error=repr(e))
            self.ok = False
            return None

    async def touch(self, entries: Iterable[tuple[str, str, str, str, bool]]) -> None:
        """(tenant, room, user, client, online) for members this gateway holds."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for tenant, room, user, client, online in entries:
            member = f"{user}{SEP}{client}"
            pipe.zadd(_key(tenant, room, "m"), {member: now + self.grace_s})
            if online:
                pipe.zadd(_key(tenant, room, "o"), {member: now + self.online_s})
            pipe.expire(_key(tenant, room, "m"), int(self.grace_s + self.ttl_s) + 1)
            n += 1
        if n:
            await self._run("touch", pipe.execute())

    async def left(self, tenant: str, room: str, user: str, client: str) -> None:
        member = f"{user}{SEP}{client}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(_key(tenant, room, "m"), member)
        pipe.zrem(_key(tenant, room, "o"), member)
        await self._run("left", pipe.execute())

    async def state(self, tenant: str, room: str, user: str, conn: str, state: Any) -> None:
        pipe = self.redis.pipeline(transaction=False)
        if state is None:
            pipe.zrem(_key(tenant, room, "s"), conn)
            pipe.hdel(_key(tenant, room, "sd"), conn)
        else:
            pipe.zadd(_key(tenant, room, "s"), {conn: time.time() + self.ttl_s})
            pipe.hset(_key(tenant, room, "sd"), conn, json.dumps({"user": user, "conn": conn, "state": state}))
            pipe.expire(_key(tenant, room, "sd"), int(self.ttl_s) + 1)
        await self._run("state", pipe.execute())

    async def snapshot(self, tenant: str, room: str) -> dict[str, Any] | None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for part in ("m", "o", "s"):
            pipe.zremrangebyscore(_key(tenant, room, part), "-inf", now)
        pipe.zrangebyscore(_key(tenant, room, "m"), now, "+inf")
        pipe.zrangebyscore(_key(tenant, room, "o"), now, "+inf")
        pipe.zrangebyscore(_key(tenant, room, "s"), now, "+inf", withscores=True)
        res = await self._run("snapshot", pipe.execute())
        if res is None:
            return None
        members_raw, online_raw, states_raw = res[3], res[4], res[5]
        online = {m.decode() for m in online_raw}
        members = []
        for m in members_raw:
            user, _, client = m.decode().partition(SEP)
            members.append({"user": user, "client": client, "online": m.decode() in online})
        states = []
        if states_raw:
            conns = [c for c, _ in states_raw]
            data = await self._run("snapshot", self.redis.hmget(_key(tenant, room, "sd"), conns)) or []
            for (conn, exp), d in zip(states_raw, data):
                if d:
                    e = json.loads(d)
                    e["ttl_s"] = round(max(0.0, exp - now), 3)
                    states.append(e)
        return {"room": room, "members": members, "states": states}


def merge_snapshots(local: dict[str, Any], remote: dict[str, Any] | None) -> dict[str, Any]:
    if not remote:
        return local
    members = {(m["user"], m["client"]): m for m in remote["members"]}
    for m in local["members"]:
        prev = members.get((m["user"], m["client"]))
        members[(m["user"], m["client"])] = {**m, "online": m["online"] or bool(prev and prev["online"])}
    states = {s["conn"]: s for s in remote["states"]}
    states.update({s["conn"]: s for s in local["states"]})
    return {"room": local["room"], "members": sorted(members.values(), key=lambda m: (m["user"], m["client"])),
            "states": list(states.values())}
