"""The live tail: read the log from a cursor, and when caught up, wait for the doorbell.

The doorbell only shortens the wait. If it stays silent (Redis down, NOTIFY lost,
another process writing to the same SQLite file) the tail still polls every
``poll_interval_s``, so it is never stuck and never misses an event.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from syncline.engine.filters import EventFilter
from syncline.engine.ports import LogPage


async def tail_log(
    store: Any,
    tenant: str | None,
    *,
    after: int = 0,
    filter: EventFilter | None = None,
    all_tenants: bool = False,
    batch: int = 500,
    poll_interval_s: float | None = None,
) -> AsyncIterator[LogPage]:
    interval = poll_interval_s if poll_interval_s is not None else store.poll_interval_s
    cursor = after
    while True:
        page = await store.read_log(tenant, after=cursor, limit=batch, filter=filter, all_tenants=all_tenants)
        cursor = page.next_after
        if page.events:
            yield page
            continue
        await store.doorbell.wait(cursor, interval)
