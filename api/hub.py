"""Fan-out of ephemeral messages (room broadcasts, direct messages, presence, Yjs relays).

In-process by default. With ``SYNCLINE_REDIS_URL`` every publish also goes to Redis
pub/sub so gateways in other processes deliver it to their own connections; messages
from this process are delivered locally at once and skipped when Redis echoes them
back. Nothing durable travels here: the log is the truth, and a client that missed a
live message catches up from its cursor.

Two independent parts talk to Redis, each with its own connection and its own health:

- the **listener** (``listener_state``) holds one pub/sub connection and reconnects
  every ``retry_s`` while Redis is gone;
- the **publisher** (``publisher_state``) is one background task per hub that drains a
  bounded FIFO queue and sends it in order, in batches, through a redis-py pipeline on
  one connection. :meth:`Hub.publish` never waits for it: it delivers locally, then
  appends the Redis copy to the queue. A full queue (``queue_max`` messages or
  ``queue_max_bytes``) drops the Redis copy and counts it (``queue_full``). When a send
  fails the publisher drops what it could not send (``redis_down``), then retries with
  backoff (a PING when nothing is queued), and is ``up`` again at its first success,
  whatever the listener is doing.

``redis_state`` combines both: ``disabled`` without Redis, ``down`` when either part is
down, ``connecting`` until both have reached Redis once, else ``up``. ``/readyz``
shows both parts, the queue depth and the drop counts (:meth:`Hub.stats`).
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import msgpack

from .logging import log
from .tracing import span, trace_active

Deliver = Callable[[Any], None]  # must not block: it enqueues to a connection's outbox

CHANNEL_PREFIX = "syncline:hub:"
QUEUE_MAX = 10_000  # messages waiting for Redis (SYNCLINE_HUB_QUEUE_MAX)
QUEUE_MAX_BYTES = 64 * 1024 * 1024  # their payload bytes (SYNCLINE_HUB_QUEUE_MAX_BYTES)
BATCH_MAX = 500  # messages per pipeline round trip
BATCH_MAX_BYTES = 1024 * 1024  # payload bytes per pipeline round trip (at least one message)
OVERFLOW_RECENT_S = 60.0  # /readyz reports an overflow this long after the last one
DROP_REASONS = ("queue_full", "redis_down", "shutdown")
_REDIS_UP = {"up": 1, "disabled": -1}  # syncline_redis_up: anything else (down, connecting) is 0


class Hub:
    def __init__(self, redis_url: str | None = None, *, retry_s: float = 1.0, metrics: Any = None,
                 queue_max: int | None = None, queue_max_bytes: int | None = None,
                 publish_retry_s: float | None = None, flush_s: float = 1.0) -> None:
        self.node = uuid.uuid4().hex
        self.redis_url = redis_url
        self.retry_s = retry_s  # the listener's reconnect interval
        self.publish_retry_s = publish_retry_s if publish_retry_s is not None else retry_s  # publisher backoff cap
        self.flush_s = flush_s  # how long close() lets the publisher drain
        self.queue_max = (queue_max if queue_max is not None
                          else int(os.environ.get("SYNCLINE_HUB_QUEUE_MAX", QUEUE_MAX)))
        self.queue_max_bytes = (queue_max_bytes if queue_max_bytes is not None
                                else int(os.environ.get("SYNCLINE_HUB_QUEUE_MAX_BYTES", QUEUE_MAX_BYTES)))
        self._subs: dict[str, set[Deliver]] = defaultdict(set)
        self._task: asyncio.Task | None = None  # the listener
        self._publisher: asyncio.Task | None = None
        self._pub_redis: Any = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self.sent = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.last_overflow: float | None = None  # time.monotonic() of the last queue_full drop
        initial = "disabled" if not redis_url else "connecting"
        self.listener_state = self.publisher_state = self.redis_state = initial
        self.listener_error: str | None = None
        self.publisher_error: str | None = None
        self.redis_error: str | None = None
        self._m_dropped = self._m_sent = None
        if metrics is not None:
            self._m_dropped = {r: metrics.hub_dropped.labels(r) for r in DROP_REASONS}
            self._m_sent = metrics.hub_published
            metrics.hub_queue_depth.set_function(lambda: len(self._queue))
            metrics.redis_up.set_function(lambda: _REDIS_UP.get(self.redis_state, 0))

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.redis_url:
            self._task = asyncio.create_task(self._listen(), name="hub-redis-listener")
            self._publisher = asyncio.create_task(self._publish_loop(), name="hub-redis-publisher")

    async def close(self) -> None:
        """Let the publisher flush for up to ``flush_s``, then stop both parts."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._publisher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._publisher), self.flush_s)
            except Exception:
                pass
        for task in (self._publisher, self._task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._drop_queue("shutdown")
        if self._pub_redis is not None:
            try:
                await self._pub_redis.aclose()
            except Exception:
                pass

    # -- state ---------------------------------------------------------------

    def _set_listener(self, state: str, error: str | None = None) -> None:
        self.listener_state, self.listener_error = state, error
        self._refresh_state()

    def _set_publisher(self, state: str, error: str | None = None) -> None:
        self.publisher_state, self.publisher_error = state, error
        self._refresh_state()

    def _refresh_state(self) -> None:
        parts = (self.listener_state, self.publisher_state)
        if not self.redis_url:
            state = "disabled"
        elif "down" in parts:
            state = "down"
        elif "connecting" in parts:
            state = "connecting"
        else:
            state = "up"
        error = None
        if state != "up":
            error = (self.listener_error if self.listener_state == "down" else None) or self.publisher_error
        if state != self.redis_state:
            if state == "down":
                log.warning("hub.redis", state=state, listener=self.listener_state,
                            publisher=self.publisher_state, error=error)
            else:
                log.info("hub.redis", state=state)
        self.redis_state, self.redis_error = state, error

    def overflowed_recently(self, within_s: float = OVERFLOW_RECENT_S) -> bool:
        return self.last_overflow is not None and time.monotonic() - self.last_overflow < within_s

    def stats(self) -> dict[str, Any]:
        """What ``/readyz`` shows under ``dependencies.redis``."""
        out: dict[str, Any] = {"state": self.redis_state}
        if not self.redis_url:
            return out
        out.update(listener=self.listener_state, publisher=self.publisher_state, queue_depth=len(self._queue),
                   queue_bytes=self._queued_bytes, queue_max=self.queue_max, sent=self.sent,
                   dropped=dict(self.dropped))
        if self.last_overflow is not None:
            out["last_overflow_s_ago"] = round(time.monotonic() - self.last_overflow, 3)
        if self.redis_error and self.redis_state != "up":
            out["error"] = self.redis_error[:200]
        return out

    # -- listener ------------------------------------------------------------

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        while True:
            client = pubsub = None
            try:
                client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=None)
                pubsub = client.pubsub()
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self._set_listener("up")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    self._on_remote(message["data"])
                raise ConnectionError("pub/sub stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down: remote fan-out degraded, retry
                self._set_listener("down", repr(e))
            finally:
                for closable in (pubsub, client):
                    if closable is not None:
                        try:
                            await closable.aclose()
                        except Exception:
                            pass
            await asyncio.sleep(self.retry_s)

    def _on_remote(self, raw: bytes) -> None:
        try:
            origin, channel, msg = msgpack.unpackb(raw, raw=False)
        except Exception:
            return
        if origin == self.node:
            return
        self._deliver_local(channel, msg)

    # -- publisher -----------------------------------------------------------

    def _count_drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.dropped[reason] += n
        if self._m_dropped is not None:
            self._m_dropped[reason].inc(n)
        if reason == "queue_full":
            if not self.overflowed_recently(5.0):  # one log line per burst, not per message
                log.warning("hub.queue_full", queue_max=self.queue_max, depth=len(self._queue))
            self.last_overflow = time.monotonic()

    def _drop_queue(self, reason: str) -> None:
        self._count_drop(reason, len(self._queue))
        self._queue.clear()
        self._queued_bytes = 0

    def _take_batch(self) -> list[tuple[str, bytes]]:
        batch: list[tuple[str, bytes]] = []
        size = 0
        q = self._queue
        while q and len(batch) < BATCH_MAX and (not batch or size + len(q[0][1]) <= BATCH_MAX_BYTES):
            item = q.popleft()
            size += len(item[1])
            batch.append(item)
        self._queued_bytes -= size
        return batch

    async def _pause(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            pass

    async def _publish_loop(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One connection, no hidden retries: a failure is seen at once and handled here.
        self._pub_redis = client = aioredis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, socket_timeout=5, max_connections=1, retry=Retry(NoBackoff(), 0))
        floor = min(0.05, self.publish_retry_s)
        delay = floor
        while True:
            if self.publisher_state == "down":
                await self._pause(delay)  # backoff; publishes keep queueing (bounded) meanwhile
                if self._closing:
                    self._drop_queue("redis_down")
                    return
            elif not self._queue and self.publisher_state == "up":
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            try:
                if batch:
                    pipe = client.pipeline(transaction=False)
                    for channel, payload in batch:
                        pipe.publish(channel, payload)
                    await pipe.execute()
                else:
                    await client.ping()  # first contact, or a probe after a failure
            except asyncio.CancelledError:
                self._count_drop("shutdown", len(batch))
                raise
            except Exception as e:
                # Drop what cannot be sent now (live messages go stale; the log is the truth).
                self._count_drop("redis_down", len(batch))
                self._drop_queue("redis_down")
                delay = min(delay * 2, max(self.publish_retry_s, floor)) if self.publisher_state == "down" else floor
                self._set_publisher("down", repr(e))
                continue
            self.sent += len(batch)
            if self._m_sent is not None and batch:
                self._m_sent.inc(len(batch))
            delay = floor
            if self.publisher_state != "up":
                self._set_publisher("up")

    # -- pub/sub -------------------------------------------------------------

    def subscribe(self, channel: str, deliver: Deliver) -> None:
        self._subs[channel].add(deliver)

    def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        subs = self._subs.get(channel)
        if subs is not None:
            subs.discard(deliver)
            if not subs:
                del self._subs[channel]

    def has_local(self, channel: str) -> bool:
        return bool(self._subs.get(channel))

    def publish(self, channel: str, msg: Any, *, skip: Deliver | None = None) -> None:
        """Deliver to local subscribers now; queue the Redis copy (never blocks, never waits)."""
        self._deliver_local(channel, msg, skip)
        if not self.redis_url or self._closing:
            return
        payload = msgpack.packb([self.node, channel, msg], use_bin_type=True)
        if len(self._queue) >= self.queue_max or self._queued_bytes + len(payload) > self.queue_max_bytes:
            self._count_drop("queue_full", 1)
            return
        self._queue.append((CHANNEL_PREFIX + channel, payload))
        self._queued_bytes += len(payload)
        self._wake.set()

    def deliver_local(self, channel: str, msg: Any) -> None:
        """Deliver to this process's subscribers only (what the log follower found)."""
        self._deliver_local(channel, msg)

    def _deliver_local(self, channel: str, msg: Any, skip: Deliver | None = None) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        if trace_active():  # inside a traced request or message: the fan-out is a span of its trace
            with span("hub.fanout", attributes={"syncline.channel": channel, "syncline.subscribers": len(subs)}):
                self._fan_out(subs, channel, msg, skip)
            return
        self._fan_out(subs, channel, msg, skip)

    def _fan_out(self, subs: set[Deliver], channel: str, msg: Any, skip: Deliver | None) -> None:
        for deliver in tuple(subs):
            if deliver is skip:
                continue
            try:
                deliver(msg)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("hub.deliver_failed", channel=channel)


def room_channel(tenant: str, room: str) -> str:
    return f"{tenant}:room:{room}"


def user_channel(tenant: str, user: str) -> str:
    return f"{tenant}:user:{user}"


def doc_channel(tenant: str, doc: str) -> str:
    return f"{tenant}:doc:{doc}"
