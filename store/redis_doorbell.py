"""A doorbell over Redis pub/sub, for several gateway processes sharing one store.

Rings are published after commit; a listener task turns messages from other
processes into local rings. Redis is optional and degradable: if it is down,
``ring`` logs and carries on, the listener retries with backoff, and tails fall
back to polling the store — later, never wrong (docs/design.md, "The log is the queue").
"""
from __future__ import annotations

import contextlib
import logging

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .doorbell_listener import ListeningDoorbell

log = logging.getLogger("syncline.store.redis")
CHANNEL = "syncline:log"


class RedisDoorbell(ListeningDoorbell):
    _task_name = "syncline-redis-doorbell"
    _log = log
    _lost_what = "doorbell subscription"
    _lost_errors = (redis.RedisError, OSError)

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__()
        # One immediate retry on a connection error: after a Redis restart the pool still
        # holds connections to the old server, and the first publish on one fails; the retry
        # reconnects, so that ring is not lost. A Redis that is really down fails twice, fast
        # (redis-py's default would back off for seconds per ring while Redis is away).
        self._client = redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0,
                                      retry=Retry(NoBackoff(), 1),
                                      retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self._channel = channel
        self._pubsub = None

    async def ring(self, tenant: str, position: int) -> None:
        self.ring_nowait(position)
        try:
            await self._client.publish(self._channel, f"{tenant} {position}")
        except (redis.RedisError, OSError) as e:
            log.warning("doorbell publish failed (%s); subscribers will poll", type(e).__name__)

    async def _subscribe(self) -> None:
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)

    async def _deliver(self) -> None:
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            with contextlib.suppress(ValueError, IndexError):
                self.ring_nowait(int(message["data"].split()[-1]))

    async def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()

    async def _release(self) -> None:
        await self._client.aclose()
