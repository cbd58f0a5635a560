"""Per-connection sliding-window rate limit: a warning first, then a temporary disconnect.

Rules: at most ``limit`` messages in any ``window_s``. The first message over the
limit is dropped and answered with a warning; a further one while still over the
limit disconnects the connection, and the (tenant, user) is refused for ``ban_s``.
Times are passed in (``time.monotonic()``).

Bans are in-process (:class:`BanList`) by default. With Redis, :class:`SharedBanList`
also records each ban in Redis (``SET key value PX ttl``) from a background task, and
the check before accepting a connection asks the local list, then Redis, so a user
banned on one gateway is refused by every gateway until the ban expires.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any
from urllib.parse import quote

from syncline.engine.ratelimit import FixedWindows, SlidingWindow, Verdict

from .logging import log

__all__ = ["BanList", "SharedBanList", "SlidingWindow", "Verdict", "Windows", "SharedWindows"]


class BanList:
    """Keys temporarily refused after a rate-limit disconnect (bounded)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self.max_entries = max_entries

    def ban(self, key: tuple[str, str], until: float) -> None:
        if len(self._until) >= self.max_entries:
            self._until.pop(next(iter(self._until)))
        self._until[key] = until

    def banned_for(self, key: tuple[str, str], now: float) -> float:
        until = self._until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[key]
            return 0.0
        return until - now

    async def check(self, key: tuple[str, str], now: float) -> float:
        """Seconds left on the ban of ``key`` (0.0: not banned)."""
        return self.banned_for(key, now)

    async def close(self) -> None:
        pass


BAN_PREFIX = "syncline:ban:"


def ban_key(key: tuple[str, str]) -> str:
    """``syncline:ban:<tenant>:<user>``, each part percent-encoded (no ``:`` inside)."""
    tenant, user = key
    return f"{BAN_PREFIX}{quote(tenant, safe='')}:{quote(user, safe='')}"


class SharedBanList(BanList):
    """A :class:`BanList` whose bans are also recorded in, and checked against, Redis.

    ``ban()`` stays synchronous: it bans locally and queues the Redis write for one
    background writer task (retried with backoff while the ban lasts). ``check()`` asks
    the local list first, then Redis with a short timeout; a ban found there is copied
    into the local list. When Redis does not answer the local list alone decides, the
    failure is counted (``syncline_ban_redis_fallback_total{op}``) and Redis is not asked
    again for ``cooldown_s``, so a dead Redis does not slow every connection down.
    """

    def __init__(self, redis_url: str, *, metrics: Any = None, timeout_s: float = 0.25, cooldown_s: float = 1.0,
                 max_pending: int = 10_000, max_entries: int = 100_000) -> None:
        super().__init__(max_entries)
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.max_pending = max_pending
        self.fallbacks: dict[str, int] = {"check": 0, "record": 0}
        self._metrics = metrics
        self._redis: Any = None
        self._pending: deque[tuple[str, float]] = deque()  # (redis key, monotonic expiry)
        self._writer: asyncio.Task | None = None
        self._skip_until = 0.0
        self._closed = False

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = aioredis.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=8, timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                socket_timeout=max(self.timeout_s, 1.0), retry=Retry(NoBackoff(), 0))
            self._redis = aioredis.Redis(connection_pool=pool)
        return self._redis

    def _fallback(self, op: str, error: BaseException | None) -> None:
        """Count a Redis operation that could not be done; ``error`` None: skipped (cooldown)."""
        self.fallbacks[op] += 1
        if self._metrics is not None:
            self._metrics.ban_redis_fallback.labels(op).inc()
        if error is not None:
            if time.monotonic() >= self._skip_until:
                log.warning("bans.redis_unavailable", op=op, error=repr(error))
            self._skip_until = time.monotonic() + self.cooldown_s

    def ban(self, key: tuple[str, str], until: float, *, shared: bool = True) -> None:
        super().ban(key, until)
        if not shared or self._closed:
            return
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._fallback("record", OverflowError("too many bans waiting for Redis"))
        self._pending.append((ban_key(key), until))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="bans-redis-writer")
            self._writer.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _write(self) -> None:
        delay = 0.05
        while self._pending:
            now = time.monotonic()
            batch = [(k, until) for k, until in self._pending if until - now >= 0.001]
            self._pending.clear()
            if not batch:
                return
            try:
                pipe = self._client().pipeline(transaction=False)
                for k, until in batch:
                    pipe.set(k, repr(round(time.time() + until - now, 3)), px=max(1, int((until - now) * 1000)))
                await asyncio.wait_for(pipe.execute(), max(self.timeout_s, 1.0))
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep the bans (newest last) and retry while they last
                self._fallback("record", e)
                self._pending.extendleft(reversed(batch))
                while len(self._pending) > self.max_pending:
                    self._pending.popleft()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def check(self, key: tuple[str, str], now: float) -> float:
        local = self.banned_for(key, now)
        if local or self._closed:
            return local
        if time.monotonic() < self._skip_until:  # Redis failed a moment ago: the local list decides
            self._fallback("check", None)
            return local
        try:
            ttl_ms = await asyncio.wait_for(self._client().pttl(ban_key(key)), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fallback("check", e)
            return 0.0
        if ttl_ms is None or ttl_ms <= 0:  # -2: no ban; -1 (no expiry) is never written by us
            return 0.0
        left = ttl_ms / 1000
        super().ban(key, now + left)  # remember it here: later checks need no round trip
        return left

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None and not self._writer.done():
            try:  # a ban made just before shutdown still reaches Redis if it can
                await asyncio.wait_for(asyncio.shield(self._writer), self.timeout_s)
            except Exception:
                pass
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):
                pass
        if self._redis is not None:
            try:
                await self._redis.aclose(close_connection_pool=True)
            except Exception:
                pass


class Windows:
    """Request counts per key in fixed windows of ``window_s`` (engine.ratelimit.FixedWindows),
    in this process. ``hit`` returns ``(allowed, retry_after_s)``. Windows are aligned on
    the wall clock, so gateways sharing Redis (:class:`SharedWindows`) count the same ones."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.local = FixedWindows(limit, window_s, max_keys)

    async def hit(self, key: tuple[str, ...], now: float) -> tuple[bool, float]:
        count = self.local.hit(key, now)
        return count <= self.limit, self.local.retry_after(now)

    async def close(self) -> None:
        pass


WINDOW_PREFIX = "syncline:rl:"


def window_key(key: tuple[str, ...], window: int) -> str:
    return WINDOW_PREFIX + ":".join(quote(part, safe="") for part in key) + f":{window}"


class SharedWindows(Windows):
    """:class:`Windows` counted in Redis, so every gateway sees one count per key and window:
    ``INCR`` of ``syncline:rl:<key parts>:<window index>`` with an expiry of two windows,
    one pipelined round trip per hit. When Redis does not answer within ``timeout_s`` the
    local count decides, the failure is counted (``syncline_ban_redis_fallback_total{op="window"}``)
    and Redis is left alone for ``cooldown_s``."""

    def __init__(self, redis_url: str, limit: int, window_s: float, *, metrics: Any = None,
                 timeout_s: float = 0.25, cooldown_s: float = 1.0, max_keys: int = 100_000) -> None:
        super().__init__(limit, window_s, max_keys=max_keys)
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.fallbacks = 0
        self._metrics = metrics
        self._redis: Any = None
        self._skip_until = 0.0

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = aioredis.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=16, timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                socket_timeout=max(self.timeout_s, 1.0), retry=Retry(NoBackoff(), 0))
            self._redis = aioredis.Redis(connection_pool=pool)
        return self._redis

    async def hit(self, key: tuple[str, ...], now: float) -> tuple[bool, float]:
        local_ok, retry = await super().hit(key, now)
        if time.monotonic() < self._skip_until:
            self._fallback(None)
            return local_ok, retry
        window = self.local.window(now)
        try:
            pipe = self._client().pipeline(transaction=False)
            k = window_key(key, window)
            pipe.incr(k)
            pipe.pexpire(k, max(1, int(self.window_s * 2000)))
            count, _ = await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fallback(e)
            return local_ok, retry
        return int(count) <= self.limit, retry

    def _fallback(self, error: BaseException | None) -> None:
        self.fallbacks += 1
        if self._metrics is not None:
            self._metrics.ban_redis_fallback.labels("window").inc()
        if error is not None:
            if time.monotonic() >= self._skip_until:
                log.warning("windows.redis_unavailable", error=repr(error))
            self._skip_until = time.monotonic() + self.cooldown_s

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose(close_connection_pool=True)
            except Exception:
                pass
