"""The event bus: the log is the bus (DESIGN.md §4). Publishing is appending; every
subscription is a cursor over the log.

    bus = Bus(store)
    sub = await bus.subscribe(handler, tenant="acme").start()              # broadcast
    dur = await bus.durable("mailer", handler, tenant="acme").start()      # durable, resumes
    m = await bus.group("billing", handler, tenant="acme").start()         # competing consumers
    await bus.dlq.requeue(entry_id)                                        # dead letters

Handlers are ``async def handler(delivery)``, or with ``batched=True`` (groups and
durable subscriptions) ``async def handler(batch)`` taking a ``Batch`` of one
partition's consecutive events; see bus/delivery.py for ack, nack and
retries, bus/idempotent.py for exactly-once effects, bus/relay.py for Redis Streams.
"""
from __future__ import annotations

from typing import Any

from syncline.store.bus import list_groups

from .broadcast import Subscription
from .delivery import Batch, BatchHandler, Delivery, Failure, Handler, RetryPolicy
from .dlq import DeadLetterQueue, dlq_stream
from .idempotent import idempotent
from .member import GroupMember, scope_of
from .relay import RedisStreamsRelay

__all__ = [
    "Batch", "BatchHandler", "Bus", "DeadLetterQueue", "Delivery", "Failure", "GroupMember", "RedisStreamsRelay",
    "RetryPolicy", "Subscription", "dlq_stream", "idempotent", "scope_of",
]


class Bus:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.dlq = DeadLetterQueue(store)

    def subscribe(self, handler: Handler, **options: Any) -> Subscription:
        """Broadcast: an independent, in-memory cursor (from the head unless ``after`` is given)."""
        return Subscription(self.store, handler, **options)

    def group(self, name: str, handler: Handler, **options: Any) -> GroupMember:
        """A member of consumer group ``name``; start several (in any processes) to share the work."""
        return GroupMember(self.store, name, handler, dlq=self.dlq, **options)

    def durable(self, name: str, handler: Handler, **options: Any) -> GroupMember:
        """A durable subscription: a one-partition group. Its position is checkpointed in the
        store and it resumes there after a restart; a second instance waits as a standby."""
        options.setdefault("partitions", 1)
        return GroupMember(self.store, name, handler, dlq=self.dlq, **options)

    def relay_to_redis(self, redis_url: str, **options: Any) -> RedisStreamsRelay:
        return RedisStreamsRelay(self.store, redis_url, **options)

    async def groups(self, scope: str | None = None) -> list[dict[str, Any]]:
        return await list_groups(self.store, scope)
