"""``SynclineClient``: the asyncio shell around a ``SessionCore``.

It owns a queue (a SQLite file by default), a connector (WebSocket with polling
fallback by default) and the core, and carries out what the core returns: frames
go to the connection, callbacks get events, conflicts and status changes. All core
calls happen on the event loop's thread, so the core needs no locks.

    client = SynclineClient("http://127.0.0.1:8000", token, user="alice",
                            queue_path="alice.queue.db")
    await client.start()
    client.set("rec/notes/1", {"title": "hello"})       # works offline too
    await client.wait_synced(timeout=10)
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping

from syncline.engine import protocol as P
from syncline.engine.errors import SynclineError
from syncline.engine.records import Conflict, ResolutionConfig

from . import core as C
from . import rules as R
from .core import SessionCore, State
from .docs import DocReplica
from .errors import ConnectionClosed, TransportError
from .queue import DEFAULT_LIMIT, MemoryOpQueue, OpQueue, SqliteOpQueue
from .transports.fallback import FallbackConnector

log = logging.getLogger("clientkit")

Callback = Callable[..., Any]
# Returns a fresh token for the same user and tenant (plain or async): the client refreshes
# in-band (``auth``) before the current one expires, and reconnects with the newest one.
TokenProvider = Callable[[], "str | Awaitable[str]"]


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), read without verifying it (the
    client only schedules its refresh with it); None when there is none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class SynclineClient:
    def __init__(
        self,
        base_url: str = "",
        token: str = "",
        *,
        user: str,
        queue_path: str | Path | None = None,
        queue: OpQueue | None = None,
        queue_limit: int = DEFAULT_LIMIT,
        connector: Any = None,
        config: ResolutionConfig | None = None,
        prefixes: Iterable[str] = ("rec/",),
        keep_local_ops_on_refresh: bool = True,
        clock_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        token_provider: TokenProvider | None = None,
        refresh_before_s: float = 60.0,
        load_rules: bool | None = None,
        **core_options: Any,
    ) -> None:
        if queue is None:
            queue = SqliteOpQueue(queue_path, queue_limit) if queue_path else MemoryOpQueue(queue_limit)
        # The server's resolution rules (GET /v1/config/resolution, clientkit/rules.py) are loaded
        # before the first sync whenever there is a server URL; ``config`` is then only checked
        # against them (a difference is ResolutionMismatch). Until they load, the rules an earlier
        # run loaded (kept in the queue) apply, so an offline restart predicts as before.
        self.load_rules_from_server = bool(base_url) if load_rules is None else load_rules
        self.local_config = config
        self.rules: dict[str, Any] | None = None
        if config is None and self.load_rules_from_server and (saved := R.stored_rules(queue)) is not None:
            try:
                config = R.config_from_published(saved)
            except SynclineError as e:
                log.warning("the stored resolution rules cannot be used (%s); waiting for the server's", e.message)
        self.base_url = base_url
        self.token = token
        self.queue = queue
        self.connector = connector if connector is not None else FallbackConnector(base_url, token)
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.core = SessionCore(user=user, queue=queue, rng=rng or random.Random(), config=config,
                                prefixes=prefixes, keep_local_ops_on_refresh=keep_local_ops_on_refresh,
                                **core_options)
        # callbacks (all optional): on_conflict(conflict), on_status(status), on_events(events),
        # on_progress(position, head), on_op_result(op_id, kind, result), on_presence(room, user, state),
        # on_message(msg), on_snapshot(position, dropped), on_snapshot_corrupt(attempt, error), on_error(msg)
        self.callbacks: dict[str, Callback] = {}
        self.conn: Any = None
        self.transport = "none"
        self.docs: dict[str, DocReplica] = {}
        self.stats = {"connects": 0, "ws_connects": 0, "poll_connects": 0, "events": 0, "acked": 0,
                      "conflicts": 0, "snapshots": 0, "corrupt_snapshots": 0, "duplicates": 0,
                      "token_refreshes": 0, "token_refresh_failures": 0, "rules_loads": 0, "rules_failures": 0}
        self._send_q: asyncio.Queue | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._want_connect = False
        self._want_close = False
        self._task: asyncio.Task | None = None
        self._closing = False
        self._paused = False
        self._last_upgrade = False
        # In-band refresh: ``token_provider()`` is asked for a new token ``refresh_before_s``
        # (at most half the remaining lifetime) before the current one's ``exp``.
        self.token_provider = token_provider
        self.refresh_before_s = refresh_before_s
        self._auth_seq = 0
        self._wall = time.time

    # -------------------------------------------------------------- resolution rules
    async def load_rules(self) -> ResolutionConfig:
        """Fetch the server's resolution rules and use them in the replica. Raises
        TransportError (unreachable: retried before the next connection),
        ResolutionMismatch (``config=`` disagrees) or MergeNotImportable."""
        rules = await R.fetch_rules(self.base_url, self.token)
        config = R.config_from_published(rules)
        if self.local_config is not None:
            R.check_agrees(self.local_config, rules)
            config = self.local_config
        replica = self.core.replica
        replica.config, replica.registry = config, config.registry
        self.rules = rules
        self.stats["rules_loads"] += 1
        R.store_rules(self.queue, rules)
        return config

    async def _ensure_rules(self) -> bool:
        """Before a connection: whether the rules are loaded (or not wanted). A failure is
        logged, counted (stats ``rules_failures``) and reported to ``on_error``."""
        if not self.load_rules_from_server or self.rules is not None:
            return True
        try:
            await self.load_rules()
            return True
        except SynclineError as e:
            self.stats["rules_failures"] += 1
            log.warning("resolution rules not loaded: %s", e.message)
            if not isinstance(e, TransportError):
                self._emit("on_error", e)
            return False

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start syncing. With a server URL, the resolution rules are loaded first: a
        ResolutionMismatch or MergeNotImportable is raised here; an unreachable server
        is not an error (the client works offline and loads them before connecting)."""
        if self.load_rules_from_server:
            try:
                await self.load_rules()
            except TransportError as e:
                log.info("resolution rules not loaded yet (%s): retried before connecting", e.message)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._apply(self.core.connect(self._clock()))
        for d in self.docs.values():
            d.start()

    async def close(self) -> None:
        self._closing = True
        if self._wake:
            self._wake.set()
        if self.conn is not None:
            await self.conn.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for d in self.docs.values():
            await d.stop()
        aclose = getattr(self.connector, "aclose", None)
        if aclose is not None:
            await aclose()
        self.core.save(self._clock())  # the replica and its position, for the next start
        self.queue.close()

    async def go_offline(self) -> None:
        """Drop the connection and stay offline until ``go_online`` (for apps and tests)."""
        self._paused = True
        self.core.auto_reconnect = False
        if self.conn is not None:
            await self.conn.close()
        await self.wait_until(lambda: self.core.state is State.OFFLINE, timeout=10)

    def go_online(self) -> None:
        self._paused = False
        self.core.auto_reconnect = True
        self._apply(self.core.connect(self._clock()))

    # -------------------------------------------------------------- user API
    def set(self, stream: str, values: Mapping[str, Any], *, delete: Iterable[str] = ()) -> None:
        self._apply(self.core.set(stream, values, self._clock(), delete=delete))

    def delete(self, stream: str, fields: Iterable[str]) -> None:
        self._apply(self.core.delete(stream, fields, self._clock()))

    def get(self, stream: str) -> dict[str, Any]:
        return self.core.get(stream)

    def resolve(self, conflict_id: str, choice: str, *, value: Any = None, custom: bool = False) -> None:
        self._apply(self.core.resolve(conflict_id, choice, self._clock(), value=value, custom=custom))

    def conflicts(self) -> list[Conflict]:
        return self.core.replica.conflicts()

    def join(self, room: str) -> None:
        self._apply(self.core.join(room))

    def leave(self, room: str) -> None:
        self._apply(self.core.leave(room))

    def set_presence(self, room: str, state: dict | None) -> None:
        self._apply(self.core.set_presence(room, state))

    def typing(self, room: str, typing: bool = True) -> None:
        self.set_presence(room, {"typing": typing})

    def cursor(self, room: str, position: Any) -> None:
        self.set_presence(room, {"cursor": position})

    def others(self, room: str) -> dict[str, Any]:
        return self.core.others(room)

    def say(self, room: str, data: Any, *, msg_id: str | None = None) -> None:
        self._apply(self.core.say(room, data, msg_id=msg_id))

    def dm(self, to: str, data: Any, *, msg_id: str | None = None) -> None:
        self._apply(self.core.dm(to, data, msg_id=msg_id))

    def doc(self, doc_id: str) -> DocReplica:
        """A Yjs document replica (created on first use, synced while the client runs)."""
        d = self.docs.get(doc_id)
        if d is None:
            d = self.docs[doc_id] = DocReplica(self.base_url, self.token, doc_id)
            if self._task is not None:
                d.start()
        return d

    def on(self, name: str, fn: Callback) -> None:
        self.callbacks[name] = fn

    @property
    def status(self) -> str:
        return self.core.status

    @property
    def pending(self) -> int:
        return len(self.queue)

    @property
    def synced(self) -> bool:
        """Online, nothing queued, and caught up with the head we know of."""
        c = self.core
        return c.state is State.ONLINE and len(self.queue) == 0 and not c.replica.pending and c.position >= c.head

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait for a condition with a deadline (no sleeps: woken by every core output)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("condition not reached in time")
            assert self._changed is not None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))
            except asyncio.TimeoutError:
                pass

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: self.synced, timeout)

    # -------------------------------------------------------------- the shell
    def _emit(self, name: str, *args: Any) -> None:
        fn = self.callbacks.get(name)
        if fn is not None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - an app callback never breaks the session
                log.exception("callback %s failed", name)

    def _apply(self, outputs: list) -> None:
        for o in outputs:
            t = type(o)
            if t is C.Send:
                if self._send_q is not None:
                    self._send_q.put_nowait(o.msg)
            elif t is C.Connect:
                self._want_connect = True
            elif t is C.Disconnect:
                self._want_close = True
            elif t is C.StateChanged:
                self._emit("on_status", self.core.status)
            elif t is C.EventsApplied:
                self.stats["events"] += len(o.events)
                self._emit("on_events", o.events)
            elif t is C.Progress:
                self._emit("on_progress", o.position, o.head)
            elif t is C.OpResult:
                self.stats["acked"] += 1
                if o.kind == "duplicate":
                    self.stats["duplicates"] += 1
                self._emit("on_op_result", o.op_id, o.kind, o.result)
            elif t is C.ConflictFound:
                self.stats["conflicts"] += 1
                self._emit("on_conflict", o.conflict)
            elif t is C.SnapshotCorrupt:
                self.stats["corrupt_snapshots"] += 1
                self._emit("on_snapshot_corrupt", o.attempt, o.error)
            elif t is C.SnapshotInstalled:
                self.stats["snapshots"] += 1
                self._emit("on_snapshot", o.position, o.dropped_ops)
            elif t is C.PresenceChanged:
                self._emit("on_presence", o.room, o.user, o.state)
            elif t is C.RoomMessage:
                self._emit("on_message", o.msg)
            elif t is C.ServerError:
                self._emit("on_error", o.msg)
        if self._wake is not None:
            self._wake.set()
        if self._changed is not None:
            self._changed.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            now = self._clock()
            self._apply(self.core.tick(now))
            if self._want_connect:
                self._want_connect = False
                await self._session()
                continue
            deadline = self.core.next_deadline()
            wait_s = 3600.0 if deadline is None else max(0.0, (deadline - self._clock()) / 1000)
            self._wake.clear()
            if self._want_connect:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), min(wait_s, 1.0))
            except asyncio.TimeoutError:
                pass

    async def _session(self) -> None:
        """One connection: open, run reader/writer/ticker until it ends, tell the core."""
        if self.token_provider is not None and self._refresh_due() <= self._wall():
            await self._refresh_token()  # (reconnecting with an expired token would be refused)
        if not await self._ensure_rules():  # (syncing with other rules than the server's would diverge)
            self._apply(self.core.disconnected(self._clock(), "resolution rules not loaded"))
            return
        try:
            open_ = self.connector.open
            conn = await open_(self.core.client_id)
        except TransportError as e:
            log.info("connect failed: %s", e.message)
            self._apply(self.core.disconnected(self._clock(), e.message))
            return
        self.conn = conn
        self.transport = conn.kind
        self.stats["connects"] += 1
        self.stats["ws_connects" if conn.kind == "ws" else "poll_connects"] += 1
        self._send_q = asyncio.Queue()
        self._want_close = False
        self._apply(self.core.connected(self._clock()))
        reason = "closed"
        tasks = [asyncio.create_task(self._reader(conn)), asyncio.create_task(self._writer(conn)),
                 asyncio.create_task(self._ticker())]
        if self.token_provider is not None:
            tasks.append(asyncio.create_task(self._refresher(conn)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    reason = getattr(exc, "message", repr(exc))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._send_q = None
            self.conn = None
            await conn.close()
            self._apply(self.core.disconnected(self._clock(), reason))
            if getattr(self, "_last_upgrade", False):
                self._last_upgrade = False
                if not self._paused:
                    self._apply(self.core.connect(self._clock()))  # back to the WebSocket at once

    async def _reader(self, conn: Any) -> None:
        try:
            while True:
                msg = await conn.recv()
                self._apply(self.core.receive(msg, self._clock()))
                if self._want_close:
                    return
        except ConnectionClosed as e:
            self._last_upgrade = e.upgrade
            raise

    async def _writer(self, conn: Any) -> None:
        q = self._send_q
        assert q is not None
        while True:
            msg = await q.get()
            await conn.send(msg)

    # -------------------------------------------------------------- tokens
    def _refresh_due(self) -> float:
        """When to ask for the next token (wall seconds): ``refresh_before_s`` before ``exp``,
        or half-way through what is left of a shorter-lived token."""
        exp = token_expiry(self.token)
        if exp is None:
            return float("inf")
        now = self._wall()
        return exp - min(self.refresh_before_s, max(0.0, exp - now) / 2)

    async def _refresh_token(self) -> bool:
        """Ask the provider for a token and make it the client's (connectors, documents)."""
        assert self.token_provider is not None
        try:
            new = self.token_provider()
            if inspect.isawaitable(new):
                new = await new
        except Exception:  # noqa: BLE001 - a failing provider: the session ends at exp, reconnect retries
            self.stats["token_refresh_failures"] += 1
            log.exception("token provider failed")
            return False
        if not isinstance(new, str) or not new:
            self.stats["token_refresh_failures"] += 1
            return False
        self.token = new
        setter = getattr(self.connector, "set_token", None)
        if setter is not None:
            setter(new)
        for d in self.docs.values():
            d.set_token(new)
        self.stats["token_refreshes"] += 1
        return True

    async def _refresher(self, conn: Any) -> None:
        """While connected: refresh before expiry and hand the new token to the server in-band
        (``auth``); a polling connection sends it with its next request."""
        while True:
            due = self._refresh_due()
            if due == float("inf"):
                return
            await asyncio.sleep(max(0.05, due - self._wall()))
            before = self.token
            if not await self._refresh_token():
                await asyncio.sleep(1.0)  # (ask again; the session ends at exp if it keeps failing)
                continue
            if self.token == before:
                await asyncio.sleep(1.0)  # the provider has nothing newer yet
                continue
            if conn.kind == "ws" and self._send_q is not None:
                self._auth_seq += 1
                self._send_q.put_nowait(P.message(P.AUTH, id=f"auth-{self._auth_seq}", token=self.token))

    async def _ticker(self) -> None:
        assert self._wake is not None
        while True:
            if self._want_close or self._closing:
                return
            now = self._clock()
            self._apply(self.core.tick(now))
            if self._want_close:
                return
            deadline = self.core.next_deadline()
            wait_s = 1.0 if deadline is None else max(0.01, min(1.0, (deadline - now) / 1000))
            await asyncio.sleep(wait_s)
