"""What the server runs for the event bus besides its routes: the per-group metrics
(api/metrics_bus.py) and, when configured, the Redis Streams relay (bus/relay.py).

``syncline serve --relay redis-streams`` (or ``SYNCLINE_RELAY=redis-streams``) relays
the whole log, every tenant, to the Redis stream ``SYNCLINE_RELAY_KEY`` (default
``syncline:events``) on the Redis of ``SYNCLINE_REDIS_URL``. The relay checkpoints as
``relay/redis`` (platform scope ``*``) and each entry's id is its log position, so
after a restart it resumes from the checkpoint and Redis refuses what it already has:
no gaps, and no duplicates in the stream (docs/bus.md#relay).
"""
from __future__ import annotations

from typing import Any

from syncline.engine.errors import ValidationError

from .metrics_bus import BusMetrics

RELAYS = ("redis-streams",)


def check_relay(settings: Any) -> None:
    if settings.relay is None:
        return
    if settings.relay not in RELAYS:
        raise ValidationError(f"unknown relay {settings.relay!r} (known: {', '.join(RELAYS)})")
    if not settings.redis_url:
        raise ValidationError("the redis-streams relay needs a Redis URL (--redis or SYNCLINE_REDIS_URL)")


class BusRuntime:
    def __init__(self, settings: Any, store: Any, registry: Any) -> None:
        check_relay(settings)
        self.settings = settings
        self.store = store
        self.metrics = BusMetrics(registry, store, interval_s=settings.bus_metrics_interval_s)
        self.relay: Any = None

    async def start(self) -> None:
        await self.metrics.start()
        if self.settings.relay == "redis-streams":
            from syncline.bus.relay import RedisStreamsRelay

            self.relay = await RedisStreamsRelay(self.store, self.settings.redis_url, all_tenants=True,
                                                 key=self.settings.relay_key).start()

    async def close(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        await self.metrics.close()

    def readiness(self) -> dict[str, Any] | None:
        """The relay's state for /readyz (None: no relay configured)."""
        return None if self.relay is None else self.relay.stats()
