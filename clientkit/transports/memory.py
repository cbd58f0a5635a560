"""In-memory transport: a session core wired straight to a synchronous server core.

The server side is anything with the frame-in/frames-out interface ``FrameServer``
(``core_server.CoreServer``: the gateway's protocol core, ``engine.session``, run by
the simulator's ``engine.sync_server.SyncServer`` on an in-memory log)::

    open(conn, *, user, client, now_ms) -> [(conn, msg), ...]     (the welcome...)
    receive(conn, msg, now_ms)          -> [(conn, msg), ...]     (answers and pushes)
    close(conn, now_ms)                 -> [(conn, msg), ...]     (presence left...)

Messages are plain dicts as ``engine.protocol`` defines them. ``MemoryLink`` steps one
core against a server synchronously (the simulator's building block);
``MemoryConnector`` gives the asyncio client the same thing as a ``Connection``.
With ``wire=True`` every message goes through ``encode_frame``/``decode_frame``, so the
codec and its validation are exercised exactly as on a socket.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any, Callable, Protocol

from syncline.engine import protocol as P

from ..core import Connect, Disconnect, Send, SessionCore
from ..errors import ConnectionClosed, TransportError

Out = list[tuple[str, dict]]


class FrameServer(Protocol):
    def open(self, conn: str, *, user: str, client: str, now_ms: int) -> Out: ...
    def receive(self, conn: str, msg: dict, now_ms: int) -> Out: ...
    def close(self, conn: str, now_ms: int) -> Out: ...


def _roundtrip(msg: dict, allowed: frozenset[str]) -> dict:
    return P.decode_frame(P.encode_frame(msg), allowed=allowed)


_conn_ids = itertools.count(1)
_SHARED: dict[int, dict] = {}  # server -> connections of MemoryConnectors
_LINKS: dict[int, dict] = {}  # server -> connections of MemoryLinks


class MemoryLink:
    """One core and one server, stepped synchronously. ``outputs`` collects every core
    output that is not a frame (events applied, conflicts, state changes...)."""

    def __init__(self, core: SessionCore, server: FrameServer, *, wire: bool = False,
                 on_output: Callable[[Any], None] | None = None) -> None:
        self.core = core
        self.server = server
        self.wire = wire
        self.conn: str | None = None
        self.up = True  # False: the network is partitioned; connection attempts fail
        self.outputs: list[Any] = []
        self.on_output = on_output
        self._to_server: deque[dict] = deque()
        self._to_client: deque[dict] = deque()

    def feed(self, outputs: list, now_ms: int) -> None:
        """Carry out a core's outputs (frames queued for the server, connects, closes)."""
        for o in outputs:
            if type(o) is Send:
                if self.conn is not None:
                    self._to_server.append(_roundtrip(o.msg, P.CLIENT_TYPES) if self.wire else o.msg)
            elif type(o) is Connect:
                self._open(now_ms)
            elif type(o) is Disconnect:
                self.drop(now_ms, notify_core=False)
            else:
                self.outputs.append(o)
                if self.on_output is not None:
                    self.on_output(o)

    def _open(self, now_ms: int) -> None:
        if not self.up:
            self.feed(self.core.disconnected(now_ms, "unreachable"), now_ms)
            return
        self.conn = f"m{next(_conn_ids)}"
        _LINKS.setdefault(id(self.server), {})[self.conn] = self
        self.feed(self.core.connected(now_ms), now_ms)
        self._route(self.server.open(self.conn, user=self.core.user, client=self.core.client_id, now_ms=now_ms))

    def _route(self, out: Out) -> None:
        links = _LINKS.setdefault(id(self.server), {})
        for conn, msg in out:
            target = self if conn == self.conn else links.get(conn)
            if target is not None:  # a push may be for another link on the same server
                target._to_client.append(_roundtrip(msg, P.SERVER_TYPES) if target.wire else msg)

    def deliver(self, msg: dict) -> None:
        self._to_client.append(msg)

    def drop(self, now_ms: int, *, notify_core: bool = True, lose_in_flight: bool = True) -> None:
        """Cut the connection (messages in flight are lost)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            _LINKS.get(id(self.server), {}).pop(conn, None)
            self._route(self.server.close(conn, now_ms))
        if lose_in_flight:
            self._to_server.clear()
            self._to_client.clear()
        if notify_core:
            self.feed(self.core.disconnected(now_ms, "dropped"), now_ms)

    def step(self, now_ms: int) -> bool:
        """Deliver one message each way; True if anything moved."""
        moved = False
        if self._to_server and self.conn is not None:
            self._route(self.server.receive(self.conn, self._to_server.popleft(), now_ms))
            moved = True
        if self._to_client:
            self.feed(self.core.receive(self._to_client.popleft(), now_ms), now_ms)
            moved = True
        return moved

    def run(self, now_ms: int, limit: int = 1_000_000) -> int:
        """Step until nothing moves (a tick first); returns the number of steps."""
        self.feed(self.core.tick(now_ms), now_ms)
        n = 0
        while n < limit and self.step(now_ms):
            n += 1
        return n

    def do(self, outputs: list, now_ms: int) -> None:
        """Carry out the outputs of a user call (``core.set(...)``) and run to quiet."""
        self.feed(outputs, now_ms)
        self.run(now_ms)


class MemoryConnection:
    kind = "memory"

    def __init__(self, server: FrameServer, conn: str, *, wire: bool, now_ms: Callable[[], int]) -> None:
        self.server = server
        self.conn = conn
        self.wire = wire
        self._now = now_ms
        self._inbox: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def push(self, msg: dict) -> None:
        self._inbox.put_nowait(_roundtrip(msg, P.SERVER_TYPES) if self.wire else msg)

    async def send(self, msg: dict) -> None:
        if self.closed:
            raise ConnectionClosed("memory connection closed")
        if self.wire:
            msg = _roundtrip(msg, P.CLIENT_TYPES)
        self.connector.dispatch(self.server.receive(self.conn, msg, self._now()))

    async def recv(self) -> dict:
        msg = await self._inbox.get()
        if msg is None:
            raise ConnectionClosed("memory connection closed")
        return msg

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connector.dispatch(self.server.close(self.conn, self._now()))
            self.connector.conns.pop(self.conn, None)
            self._inbox.put_nowait(None)

    connector: "MemoryConnector"


class MemoryConnector:
    """Opens ``MemoryConnection``s to one server; several clients may share a connector,
    and pushes to other connections (live events, presence) reach them."""

    def __init__(self, server: FrameServer, *, user: str = "", wire: bool = True,
                 now_ms: Callable[[], int] | None = None) -> None:
        self.server = server
        self.user = user
        self.wire = wire
        self.available = True
        # Shared by every connector of this server, so pushes reach other users' connections.
        self.conns: dict[str, MemoryConnection] = _SHARED.setdefault(id(server), {})
        loop_time = lambda: int(asyncio.get_running_loop().time() * 1000)  # noqa: E731
        self._now = now_ms or loop_time

    def for_user(self, user: str) -> "MemoryConnector":
        c = MemoryConnector.__new__(MemoryConnector)
        c.__dict__.update(self.__dict__)
        c.user = user
        return c

    async def open(self, client: str = "") -> MemoryConnection:
        if not self.available:
            raise TransportError("memory server unavailable")
        conn = f"m{next(_conn_ids)}"
        mc = MemoryConnection(self.server, conn, wire=self.wire, now_ms=self._now)
        mc.connector = self
        self.conns[conn] = mc
        self.dispatch(self.server.open(conn, user=self.user, client=client, now_ms=self._now()))
        return mc

    def dispatch(self, out: Out) -> None:
        for conn, msg in out:
            target = self.conns.get(conn)
            if target is not None:
                target.push(msg)

    async def drop_all(self) -> None:
        for mc in list(self.conns.values()):
            await mc.close()
