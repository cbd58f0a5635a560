"""Adapters for state: the event store on SQLite, PostgreSQL or memory, chosen by URL.

    store = await open_store("sqlite+aiosqlite:///var/syncline.db")
    store = await open_store("postgresql+asyncpg://user@127.0.0.1:5432/syncline")
    store = await open_store("memory://")
"""
from __future__ import annotations

from typing import Any

from syncline.engine.errors import ValidationError

from .memory import MemoryEventStore
from .sql import SqlEventStore

__all__ = ["open_store", "SqlEventStore", "MemoryEventStore"]


async def open_store(
    url: str, *, migrate: bool = True, listen: bool = True, redis_url: str | None = None, **options: Any
):
    """Open (and by default migrate) the store named by ``url``.

    Options go to the store: ``upcasters``, ``max_payload``, ``clock_us``,
    ``poll_interval_s``, ``doorbell``, ``audit_key`` and ``audit_checkpoint_every``
    (signed audit checkpoints, store/audit.py; SQL stores only). With ``redis_url`` the doorbell is Redis
    pub/sub; otherwise, on PostgreSQL, ``listen`` starts the LISTEN/NOTIFY doorbell,
    so tails wake on commits from other processes either way.
    """
    if redis_url and "doorbell" not in options:
        from .redis_doorbell import RedisDoorbell

        bell = RedisDoorbell(redis_url)
        bell.start()
        options["doorbell"] = bell
    if url.startswith("memory://"):
        # Nothing to sign: the in-memory log cannot be tampered with behind the process.
        options.pop("audit_key", None)
        options.pop("audit_checkpoint_every", None)
        return MemoryEventStore(**options)
    if url.startswith("sqlite"):
        from .sqlite import create_engines

        if not url.startswith("sqlite+aiosqlite://"):
            raise ValidationError("SQLite URLs must use the aiosqlite driver: sqlite+aiosqlite:///path.db")
        from .sqlite_reader import SqliteReader
        from .sqlite_writer import SqliteBatchWriter

        writer, reader = create_engines(url)
        batch_writer = SqliteBatchWriter(url)
        options["sqlite_reader"] = SqliteReader(url)
        on_close = None
    elif url.startswith("postgresql"):
        from .postgres import PAGE_DISCONNECTS, PgNotifyDoorbell, create_engine, create_page_engine

        if not url.startswith("postgresql+asyncpg://"):
            raise ValidationError("PostgreSQL URLs must use the asyncpg driver: postgresql+asyncpg://...")
        from .pg_writer import PgBatchWriter

        writer = reader = create_engine(url)
        options["page_engine"] = create_page_engine(url)
        options["page_disconnects"] = PAGE_DISCONNECTS
        batch_writer = PgBatchWriter(writer)
        on_close = None
        if listen and "doorbell" not in options:
            bell = PgNotifyDoorbell(url)
            bell.start()
            options["doorbell"] = bell
    else:
        raise ValidationError(f"unsupported store URL {url.split(':', 1)[0]!r}")
    if migrate:
        from .migrate import upgrade

        try:
            await upgrade(writer)
        except Exception as e:
            from .errors import map_db_error

            await writer.dispose()
            if "page_engine" in options:
                await options["page_engine"].dispose()
            if "doorbell" in options:
                await options["doorbell"].close()
            raise map_db_error(e) from e
    return SqlEventStore(writer, reader, batch_writer, on_close=on_close, **options)
