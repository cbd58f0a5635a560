"""Idempotent consumers: exactly-once effects on top of at-least-once delivery.

    @idempotent
    async def handle(delivery, conn):
        await conn.execute(insert(orders_projection).values(...))

The wrapped handler runs inside one database transaction that also records
(group, event id) in ``bus_processed``. If the id is already there (a redelivery after
a crash, a requeue of an event whose effect had been committed), the handler is not
called and ``delivery.duplicate`` is set. If the handler raises or nacks, the
transaction rolls back, processed-id record included, so the retry runs it again.

Write through ``conn`` only: on SQLite, appending to the log with ``store.append`` from
inside the transaction would wait for the write lock this transaction holds.
"""
from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from syncline.store.bus import mark_processed
from syncline.store.errors import map_db_error

from .delivery import Delivery

ConnHandler = Callable[[Delivery, AsyncConnection], Awaitable[Any]]


class _Rollback(Exception):
    pass


def idempotent(handler: ConnHandler) -> Callable[[Delivery], Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapped(d: Delivery) -> Any:
        try:
            async with d.transaction() as conn:
                if not await mark_processed(conn, d.scope, d.group, d.event.id):
                    d.duplicate = True
                    d.ack()
                    return None
                result = await handler(d, conn)
                if d.outcome is not None and d.outcome[0] == "nack":
                    raise _Rollback
                return result
        except _Rollback:
            return None
        except Exception as e:
            # Driver errors become typed errors here; the handler's own errors pass through.
            if type(e).__module__.split(".")[0] in ("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite"):
                raise map_db_error(e) from e
            raise

    return wrapped
