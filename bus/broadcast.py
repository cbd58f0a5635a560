"""Broadcast subscriptions: each subscriber reads the log independently from its own,
in-memory position. Nothing is stored; after ``max_attempts`` a failing event is
reported to ``on_give_up`` (logged by default) and skipped. For a position that
survives restarts, use a durable subscription (Bus.durable)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from syncline.engine.errors import SynclineError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter

from .delivery import Delivery, Failure, Handler, RetryPolicy, attempt
from .member import scope_of

log = logging.getLogger("syncline.bus")


class Subscription:
    def __init__(
        self,
        store: Any,
        handler: Handler,
        *,
        tenant: str | None = None,
        all_tenants: bool = False,
        filter: EventFilter | None = None,
        after: int | None = None,
        policy: RetryPolicy = RetryPolicy(),
        batch: int = 500,
        include_system_streams: bool = False,
        on_give_up: Callable[[RecordedEvent, Failure], Awaitable[None]] | None = None,
        name: str = "broadcast",
    ) -> None:
        self.store = store
        self.handler = handler
        self.scope = scope_of(tenant, all_tenants)
        self.tenant = tenant
        self.all_tenants = all_tenants
        self.filter = filter
        self.position = after  # None: start at the head when started
        self.policy = policy
        self.batch = batch
        self.include_system = include_system_streams
        self.on_give_up = on_give_up
        self.name = name
        self.handled = 0
        self.given_up = 0
        self._task: asyncio.Task | None = None
        pair = getattr(store, "engines", None)  # None on memory://: handlers get no transaction
        self._tx = pair[0].begin if pair is not None else None

    async def start(self) -> "Subscription":
        if self.position is None:
            self.position = await self.store.head_position()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus-broadcast-{self.name}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def __aenter__(self) -> "Subscription":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _run(self) -> None:
        bell = self.store.doorbell
        while True:
            try:
                page = await self.store.read_log(
                    None if self.all_tenants else self.tenant, after=self.position, limit=self.batch,
                    filter=self.filter, all_tenants=self.all_tenants,
                )
            except SynclineError as e:
                log.warning("broadcast %s read failed: %s", self.name, e.code)
                await asyncio.sleep(0.5)
                continue
            for ev in page.events:
                if self.include_system or ev.stream[0] != "$":
                    await self._deliver(ev)
                self.position = ev.position
            self.position = page.next_after
            if not page.events:
                await bell.wait(self.position, self.store.poll_interval_s)

    async def _deliver(self, ev: RecordedEvent) -> None:
        for n in range(1, self.policy.max_attempts + 1):
            d = Delivery(ev, group=self.name, scope=self.scope, member=self.name, attempt=n, tx=self._tx)
            failure = await attempt(self.handler, d, self.policy)
            if failure is None:
                self.handled += 1
                return
            if n < self.policy.max_attempts:
                await asyncio.sleep(failure.delay_s if failure.delay_s is not None else self.policy.delay_after(n))
        self.given_up += 1
        if self.on_give_up is not None:
            await self.on_give_up(ev, failure)
        else:
            log.error("broadcast %s gave up on event %s after %d attempts: %s", self.name, ev.id, n, failure.reason)
