"""``CoreServer``: the production protocol core as a ``FrameServer`` for the in-memory transport.

There is one server implementation of docs/protocol.md: ``engine.session.ServerSession``,
the core the gateway (``/v1/ws``) runs. ``engine.sync_server.SyncServer`` performs its
effects synchronously on an in-memory log; this adapter gives that server the
interface ``MemoryLink`` and ``MemoryConnector`` drive (``transports.memory.FrameServer``:
string connection ids, ``open``/``receive``/``close``), so the client kit's tests,
examples and simulations run against the server production runs::

    from syncline.store.memory_sync_log import MemorySyncLog    # (the caller wires a log adapter in)

    srv = CoreServer(MemorySyncLog(), open_config(notes=CollectionPolicy(...)),
                     config=ServerConfig(max_behind_events=5))
    link = MemoryLink(core, srv, wire=True)
    srv.records          # the server's records (what replicas must converge to)
    srv.events()         # the tenant's log, as RecordedEvents
    srv.head             # the log head

``SyncServer`` wakes subscriptions waiting on the log only in ``tick``: the adapter
ticks after every call, so an append reaches the other connections at once.

Fault hooks for tests (they act on the messages the core sends):
``corrupt_snapshots`` (how many next snapshots get a flipped byte in their first
chunk) and ``lose_opacks`` (how many next op batches are committed but never answered).
"""
from __future__ import annotations

from typing import Any

from syncline.engine import protocol as P
from syncline.engine.events import RecordedEvent
from syncline.engine.records import CollectionPolicy, RecordsState, ResolutionConfig
from syncline.engine.sync_server import Principal, ServerConfig, SyncLog, SyncServer

from .memory import Out


def open_config(**collections: CollectionPolicy) -> ResolutionConfig:
    """The gateway's default resolution (every collection, every field LWW), plus ``collections``."""
    return ResolutionConfig(collections, default_collection=CollectionPolicy())


class CoreServer:
    """A ``FrameServer`` over :class:`engine.sync_server.SyncServer` on ``log`` (a
    ``SyncLog`` adapter: ``store.memory_sync_log.MemorySyncLog`` in tests), for one tenant."""

    def __init__(self, log: SyncLog, resolution: ResolutionConfig | None = None, *,
                 config: ServerConfig | None = None, tenant: str = "acme",
                 perms: frozenset[str] = frozenset({"read", "write"})) -> None:
        self.tenant = tenant
        self.perms = perms
        self.server = SyncServer(log, resolution or open_config(), config or ServerConfig())
        self._ids: dict[str, int] = {}  # our connection ids -> SyncServer's
        self._names: dict[int, str] = {}
        self.corrupt_snapshots = 0
        self.lose_opacks = 0
        self.committed_batches = 0  # op batches answered by the core (lost answers included)

    # -- inspection -------------------------------------------------------------
    @property
    def log(self) -> SyncLog:
        return self.server.log

    @property
    def config(self) -> ServerConfig:
        return self.server.config

    @property
    def head(self) -> int:
        return self.server.log.head()

    @property
    def records(self) -> RecordsState:
        return self.server.records(self.tenant)

    def events(self) -> list[RecordedEvent]:
        """Every event of the tenant, in log order."""
        log = self.server.log
        return log.read(self.tenant, 0, log.count_after(self.tenant, 0))

    def conn_id(self, conn: str) -> int | None:
        """``SyncServer``'s id of one of our connections (None once it is closed)."""
        return self._ids.get(conn)

    # -- FrameServer ------------------------------------------------------------
    def open(self, conn: str, *, user: str, client: str, now_ms: int) -> Out:
        cid, raw = self.server.connect(Principal(self.tenant, user, perms=self.perms), now_ms)
        self._ids[conn] = cid
        self._names[cid] = conn
        if client:  # what ``?client=`` does on the gateway
            raw += self.server.receive(cid, P.message(P.HELLO, client=client), now_ms)
        return self._out(raw, now_ms)

    def receive(self, conn: str, msg: dict, now_ms: int) -> Out:
        cid = self._ids.get(conn)
        if cid is None:
            return []
        return self._out(self.server.receive(cid, msg, now_ms), now_ms)

    def close(self, conn: str, now_ms: int) -> Out:
        cid = self._ids.pop(conn, None)
        if cid is None:
            return []
        out = self._out(self.server.disconnect(cid, now_ms), now_ms)
        self._names.pop(cid, None)
        return out

    def tick(self, now_ms: int) -> Out:
        """Heartbeats, ack timeouts, presence expiry and subscriptions woken by appends."""
        return self._convert(self.server.tick(now_ms))

    # -- internals --------------------------------------------------------------
    def _out(self, raw: list[tuple[int, dict[str, Any]]], now_ms: int) -> Out:
        # The call may have appended (ops, messages, presence): wake the waiting subscriptions.
        return self._convert(raw) + self._convert(self.server.tick(now_ms))

    def _convert(self, raw: list[tuple[int, dict[str, Any]]]) -> Out:
        out: Out = []
        for cid, msg in raw:
            conn = self._names.get(cid)
            if conn is None:
                continue
            t = msg.get("t")
            if t == P.OPACKS:
                self.committed_batches += 1
                if self.lose_opacks > 0:
                    self.lose_opacks -= 1  # committed, but the answer is lost on the way
                    continue
            elif t == P.SNAPSHOT and msg["index"] == 0 and self.corrupt_snapshots > 0:
                self.corrupt_snapshots -= 1
                data = bytes(msg["data"])
                i = 1 if len(data) > 1 else 0
                msg = {**msg, "data": data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]}  # (a copy: shared)
            out.append((conn, msg))
        return out
