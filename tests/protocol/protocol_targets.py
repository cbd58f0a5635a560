"""One set of protocol scenarios, several servers: the targets of the conformance suite.

- ``core``: :class:`engine.sync_server.SyncServer` (the protocol core, ``engine.session``,
  on an in-memory log) under a virtual clock: no sockets, no waiting;
- ``gateway-sqlite`` and ``gateway-postgres``: a real gateway (``api.app``) on a real port,
  spoken to over WebSocket, on a SQLite file or a fresh PostgreSQL database.

Each target hands out connections with the same small API (``send``, ``expect``,
``close``) and seeds the log the same way, so a scenario cannot tell them apart
except through the protocol itself, which is the point.
"""
from __future__ import annotations

import asyncio
import sys
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402
from api_wsclient import NativeClient  # noqa: E402

from syncline.engine import protocol as P  # noqa: E402
from syncline.engine.events import NewEvent, StreamWrite  # noqa: E402
from syncline.engine.records import CollectionPolicy, ResolutionConfig  # noqa: E402
from syncline.engine.sync_server import Principal, ServerConfig, SyncServer  # noqa: E402
from syncline.store.memory_sync_log import MemorySyncLog  # noqa: E402

TENANT = "acme"
# Knobs every target gets the same values of (the gateway's are seconds, the core's ms).
MAX_BEHIND = 50
RATE_LIMIT = 40  # messages per window
STALE_S = 1.5
BATCH = 20
WINDOW = 2


class CoreConn:
    def __init__(self, target: CoreTarget, conn_id: int) -> None:
        self.t = target
        self.id = conn_id
        self.inbox: deque[dict] = deque()
        self.closed = False

    async def send(self, t: str, **fields: Any) -> None:
        if self.closed:
            raise ConnectionError("closed")
        self.t.route(self.t.server.receive(self.id, P.message(t, **fields), self.t.now_ms))

    async def expect(self, t: str, timeout: float = 5, *, skip=("presence",)) -> dict:
        """The next message of type ``t``; virtual time moves on while nothing is queued."""
        waited = 0
        while True:
            while self.inbox:
                msg = self.inbox.popleft()
                if msg["t"] == t:
                    return msg
                if msg["t"] not in skip:
                    raise AssertionError(f"expected {t!r}, got {msg!r}")
            if waited >= timeout * 1000:
                raise asyncio.TimeoutError(f"no {t!r} within {timeout}s")
            self.t.advance(50)
            waited += 50

    async def quiet(self, seconds: float = 0.3) -> list[dict]:
        """Whatever arrives within ``seconds`` (presence excluded)."""
        self.t.advance(int(seconds * 1000))
        got = [m for m in self.inbox if m["t"] != P.PRESENCE]
        self.inbox.clear()
        return got

    async def closed_with(self, timeout: float = 5) -> int | None:
        waited = 0
        while not self.closed and waited < timeout * 1000:
            self.t.advance(100)
            waited += 100
        return self.close_code

    close_code: int | None = None

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.t.route(self.t.server.disconnect(self.id, self.t.now_ms))


class CoreTarget:
    name = "core"

    def __init__(self) -> None:
        self.log = MemorySyncLog()
        self.server = SyncServer(self.log, ResolutionConfig({}, default_collection=CollectionPolicy()), ServerConfig(
            max_behind_events=MAX_BEHIND, batch_events_max=BATCH, window_batches_max=WINDOW,
            stale_ms=int(STALE_S * 1000), rate_limit_messages=RATE_LIMIT))
        self.conns: dict[int, CoreConn] = {}
        self.now_ms = 1_000

    def route(self, out: list[tuple[int, dict]]) -> None:
        for cid, msg in out:
            c = self.conns.get(cid)
            if c is None:
                continue
            c.inbox.append(msg)
            if msg["t"] == P.BYE:
                c.closed = True
                c.close_code = msg.get("close")

    def advance(self, ms: int) -> None:
        self.now_ms += ms
        self.route(self.server.tick(self.now_ms))

    async def connect(self, user: str, *, client: str | None = None, perms=("read", "write")) -> CoreConn:
        cid, out = self.server.connect(Principal(TENANT, user, perms=frozenset(perms)), self.now_ms)
        conn = self.conns[cid] = CoreConn(self, cid)
        self.route(out)
        if client:
            await conn.send(P.HELLO, client=client)
        return conn

    async def seed(self, stream: str, n: int) -> None:
        self.log.append(TENANT, [StreamWrite(stream, tuple(NewEvent("seed.e", {"i": i}) for i in range(n)))],
                        self.now_ms * 1000)
        self.server._dirty[TENANT] = None  # the simulator's appends mark the tenant; seeding is one
        self.advance(0)

    async def shutdown(self, conns: list) -> None:
        self.route(self.server.shutdown("test", self.now_ms))


class GatewayConn:
    def __init__(self, client: NativeClient) -> None:
        self.c = client

    async def send(self, t: str, **fields: Any) -> None:
        await self.c.send(t, **fields)

    async def expect(self, t: str, timeout: float = 5, *, skip=("presence",)) -> dict:
        return await self.c.expect(t, timeout, skip=skip)

    async def quiet(self, seconds: float = 0.3) -> list[dict]:
        got = []
        try:
            while True:
                msg = await self.c.recv(timeout=seconds)
                if msg["t"] != P.PRESENCE:
                    got.append(msg)
        except (asyncio.TimeoutError, Exception):
            return got

    async def closed_with(self, timeout: float = 5) -> int | None:
        code, _ = await self.c.closed(timeout)
        return code

    async def close(self) -> None:
        await self.c.close()


class GatewayTarget:
    def __init__(self, name: str, db_url: str) -> None:
        self.name = name
        self.g = RunningGateway(base_settings(
            db_url, max_behind=MAX_BEHIND, rate_limit_messages=RATE_LIMIT, rate_limit_window_s=60.0,
            stale_after_s=STALE_S, event_batch_max=BATCH, unacked_batches_max=WINDOW, batch_window_ms=0,
            poll_interval_s=0.2)).start()

    async def connect(self, user: str, *, client: str | None = None, perms=("read", "write")) -> GatewayConn:
        roles = ("member",) if "write" in perms else ("viewer",)
        c = await NativeClient.connect(self.g.ws_url, self.g.token(user=user, roles=roles),
                                       query=f"client={client}" if client else "")
        return GatewayConn(c)

    async def seed(self, stream: str, n: int) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.g.url, headers=self.g.headers()) as h:
            r = await h.post(f"/v1/streams/{stream}", json={"events": [
                {"type": "seed.e", "data": {"i": i}} for i in range(n)]})
            assert r.status_code == 201, r.text

    async def shutdown(self, conns: list) -> None:
        self.g.call(self.g.app.state.gateway.shutdown("test"))
