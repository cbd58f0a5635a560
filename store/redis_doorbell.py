"""A doorbell over Redis pub/sub, for several gateway processes sharing one store.

Rings are published after commit; a listener task turns messages from other
processes into local rings. Redis is optional and degradable: if it is down,
``ring`` logs and carries on, the listener retries with backoff, and tails fall
back to polling the store — later, never wrong (DESIGN.md §4).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from .doorbell import LocalDoorbell

log = logging.getLogger("syncline.store.redis")
CHANNEL = "syncline:log"


class RedisDoorbell(LocalDoorbell):
    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__()
        self._client = redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._channel = channel
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="syncline-redis-doorbell")

    async def ring(self, tenant: str, position: int) -> None:
        self.ring_nowait(position)
        try:
            await self._client.publish(self._channel, f"{tenant} {position}")
        except (redis.RedisError, OSError) as e:
            log.warning("doorbell publish failed (%s); subscribers will poll", type(e).__name__)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.connected.set()
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    with contextlib.suppress(ValueError, IndexError):
                        self.ring_nowait(int(message["data"].split()[-1]))
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as e:
                log.warning("doorbell subscription lost (%s); retrying in %.1fs", type(e).__name__, delay)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.aclose()
        await super().close()
