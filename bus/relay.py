"""Relay the log to Redis Streams, for consumers that already read from Redis.

Each event is XADDed with the id ``<position>-0``. Redis refuses an id that is not
above the stream's last one, so after a crash between XADD and the checkpoint the
relay re-publishes from its checkpoint and Redis drops what it already has:
publishing is idempotent, and the Redis stream's order is the log's order.
(With several target keys, each key still gets increasing ids: positions only grow.)
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import redis.asyncio as redis

from syncline.engine.codec import pack
from syncline.engine.errors import StoreUnavailable, SynclineError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter

from .member import check_group_name, scope_of

log = logging.getLogger("syncline.bus.relay")
DEFAULT_KEY = "syncline:events"


def redis_id(position: int) -> str:
    return f"{position}-0"


def event_fields(ev: RecordedEvent) -> dict[str, Any]:
    return {
        "id": ev.id, "tenant": ev.tenant, "stream": ev.stream, "version": ev.version, "position": ev.position,
        "type": ev.type, "time_us": ev.time_us, "data": pack(ev.data), "meta": pack(dict(ev.meta)),
    }


class RedisStreamsRelay:
    def __init__(
        self,
        store: Any,
        redis_url: str,
        *,
        name: str = "redis",
        tenant: str | None = None,
        all_tenants: bool = False,
        filter: EventFilter | None = None,
        key: str | Callable[[RecordedEvent], str] = DEFAULT_KEY,
        maxlen: int | None = None,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.name = check_group_name(name)
        self.scope = scope_of(tenant, all_tenants)
        self.tenant = tenant
        self.all_tenants = all_tenants
        self.filter = filter
        self.key = key
        self.maxlen = maxlen
        self.batch = batch
        self.published = 0
        self.duplicates = 0
        self.failures = 0  # passes that failed (Redis or the store down); retried from the checkpoint
        self.last_error: str | None = None
        self.cursor = 0  # the checkpoint as of the last pass
        self._client = redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self._task: asyncio.Task | None = None
        self.checkpoint_name = f"relay/{self.name}"

    async def position(self) -> int:
        return await self.store.load_checkpoint(self.checkpoint_name, self.scope) or 0

    async def run_once(self, *, after: int | None = None) -> int:
        """Publish everything committed past the checkpoint (or ``after``); return how many
        events were read."""
        cursor = await self.position() if after is None else after
        total = 0
        while True:
            page = await self.store.read_log(
                None if self.all_tenants else self.tenant, after=cursor, limit=self.batch, filter=self.filter,
                all_tenants=self.all_tenants,
            )
            if page.events:
                await self._publish(page.events)
                total += len(page.events)
            if page.next_after > cursor:
                cursor = page.next_after
                await self.store.save_checkpoint(self.checkpoint_name, self.scope, cursor)
            if not page.events:
                return total

    async def _publish(self, events: tuple[RecordedEvent, ...]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for ev in events:
            key = self.key(ev) if callable(self.key) else self.key
            pipe.xadd(key, event_fields(ev), id=redis_id(ev.position), maxlen=self.maxlen, approximate=True)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as e:
            raise StoreUnavailable(f"redis is unavailable: {type(e).__name__}") from e
        for r in results:
            if isinstance(r, redis.ResponseError):
                if "equal or smaller" in str(r):
                    self.duplicates += 1  # published before a crash; Redis keeps the first copy
                    continue
                raise SynclineError(f"XADD failed: {r}")
            if isinstance(r, Exception):
                raise StoreUnavailable(f"redis failed: {type(r).__name__}")
            self.published += 1

    async def start(self) -> "RedisStreamsRelay":
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus-relay-{self.name}")
        return self

    async def _run(self) -> None:
        bell = self.store.doorbell
        cursor = 0
        while True:
            try:
                await self.run_once()
                cursor = self.cursor = await self.position()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except SynclineError as e:  # Redis or the store is down: try again later, from the checkpoint
                log.warning("relay %s: %s", self.name, e.code)
                self.failures += 1
                self.last_error = e.code
                await asyncio.sleep(1.0)
                continue
            await bell.wait(cursor, self.store.poll_interval_s)

    def stats(self) -> dict[str, Any]:
        """For /readyz: ``retrying`` while the last pass failed (it resumes from its checkpoint)."""
        running = self._task is not None and not self._task.done()
        return {"state": ("retrying" if self.last_error else "up") if running else "stopped",
                "kind": "redis-streams", "name": self.name, "checkpoint": self.cursor, "published": self.published,
                "duplicates_dropped": self.duplicates, "failures": self.failures, "error": self.last_error}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._client.aclose()
