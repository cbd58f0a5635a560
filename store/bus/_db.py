"""What the bus tables share: the store's engines, the dialect's upsert, the clock."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from syncline.engine.errors import ValidationError


def now_us() -> int:
    return time.time_ns() // 1000


def engines(store: Any) -> tuple[AsyncEngine, AsyncEngine]:
    """(write, read) engines of a SqlEventStore. The bus keeps its state in the same
    database as the log, so a handler's writes, its processed-id record and the log can
    share transactions; the in-memory store has no database, so it cannot host a bus."""
    pair = getattr(store, "engines", None)  # SqlEventStore.engines
    if pair is None:
        raise ValidationError("the event bus needs a SQL store (SQLite or PostgreSQL), not memory://")
    return pair


def insert_for(dialect: str):
    return pg_insert if dialect == "postgresql" else sqlite_insert
