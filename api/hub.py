"""Fan-out of ephemeral messages (room broadcasts, direct messages, presence, Yjs relays).

In-process by default. With ``SYNCLINE_REDIS_URL`` every publish also goes to Redis
pub/sub so gateways in other processes deliver it to their own connections; messages
from this process are delivered locally at once and skipped when Redis echoes them
back. When Redis is down the hub degrades to in-process delivery (``/readyz`` says so)
and keeps retrying. Nothing durable travels here: the log is the truth, and a client
that missed a live message catches up from its cursor.
"""
from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any, Callable

import msgpack

from .logging import log

Deliver = Callable[[Any], None]  # must not block: it enqueues to a connection's outbox

CHANNEL_PREFIX = "syncline:hub:"


class Hub:
    def __init__(self, redis_url: str | None = None, *, retry_s: float = 1.0) -> None:
        self.node = uuid.uuid4().hex
        self.redis_url = redis_url
        self.retry_s = retry_s
        self._subs: dict[str, set[Deliver]] = defaultdict(set)
        self._redis: Any = None
        self._task: asyncio.Task | None = None
        self.redis_state = "disabled" if not redis_url else "connecting"
        self.redis_error: str | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.redis_url:
            self._task = asyncio.create_task(self._listen(), name="hub-redis-listener")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:
                pass

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        while True:
            pubsub = None
            try:
                self._redis = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=None)
                pubsub = self._redis.pubsub()
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self._set_state("up")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    self._on_remote(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down: degrade to in-process, retry
                self._set_state("down", repr(e))
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
            await asyncio.sleep(self.retry_s)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.redis_state:
            log.warning("hub.redis", state=state, error=error) if state == "down" else log.info("hub.redis", state=state)
        self.redis_state, self.redis_error = state, error

    def _on_remote(self, raw: bytes) -> None:
        try:
            origin, channel, msg = msgpack.unpackb(raw, raw=False)
        except Exception:
            return
        if origin == self.node:
            return
        self._deliver_local(channel, msg)

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
        self._deliver_local(channel, msg, skip)
        if self.redis_state == "up" and self._redis is not None:
            payload = msgpack.packb([self.node, channel, msg], use_bin_type=True)
            asyncio.get_running_loop().create_task(self._publish_remote(channel, payload))

    async def _publish_remote(self, channel: str, payload: bytes) -> None:
        try:
            await self._redis.publish(CHANNEL_PREFIX + channel, payload)
        except Exception as e:
            self._set_state("down", repr(e))

    def _deliver_local(self, channel: str, msg: Any, skip: Deliver | None = None) -> None:
        for deliver in tuple(self._subs.get(channel, ())):
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
