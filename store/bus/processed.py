"""Processed event ids for idempotent consumers: recorded in the handler's own transaction."""
from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from ..bus_schema import bus_processed
from ..errors import db_errors
from ._db import engines, insert_for, now_us


async def mark_processed(conn: AsyncConnection, scope: str, group: str, event_id: str) -> bool:
    """Record ``event_id`` as processed by the group inside ``conn``'s transaction.

    True if this is the first time; False if it was already recorded (the handler must
    then do nothing). On PostgreSQL a concurrent, uncommitted record of the same id
    makes this wait for that transaction, so two members never both see True.
    """
    ins = insert_for(conn.dialect.name)
    res = await conn.execute(
        ins(bus_processed)
        .values(scope=scope, group_name=group, event_id=event_id, processed_us=now_us())
        .on_conflict_do_nothing(index_elements=["scope", "group_name", "event_id"])
    )
    return res.rowcount == 1


@db_errors
async def forget_processed(store: Any, *, older_than_us: int) -> int:
    """Drop processed-id records older than a cut-off (keep them longer than any redelivery window)."""
    w, _ = engines(store)
    async with w.begin() as conn:
        res = await conn.execute(delete(bus_processed).where(bus_processed.c.processed_us < older_than_us))
    return res.rowcount or 0
