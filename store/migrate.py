"""Apply alembic migrations at startup, safely when several processes start at once."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from pathlib import Path
from typing import AsyncIterator

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every Syncline process.
_PG_MIGRATION_LOCK = 0x53594E43  # "SYNC"


def _config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision.

    On PostgreSQL a session advisory lock makes concurrent starters queue up: the
    first migrates, the others then find nothing to do. On a SQLite file an exclusive
    lock on a file beside it does the same (BEGIN IMMEDIATE alone did not: alembic reads
    the version before its first write, so two processes starting on a new file both
    created the tables, and one failed with "table ... already exists").
    """
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # (the service sets it: SYNCLINE_LOG_LEVEL, api/logging.py)
        alembic_log.setLevel(logging.WARNING)  # one line per revision is noise at startup
    async with _sqlite_file_lock(engine):
        await _upgrade(engine)


@contextlib.asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    fd = open(f"{path}.migrate-lock", "a+b")  # noqa: SIM115 - held for the block
    try:
        await asyncio.to_thread(fcntl.flock, fd.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd.fileno(), fcntl.LOCK_UN)
        finally:
            fd.close()


async def _upgrade(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        is_pg = conn.dialect.name == "postgresql"
        if is_pg:
            await conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})")
        try:
            await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), "head"))
            await conn.commit()
        finally:
            if is_pg:
                await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})")
                await conn.commit()
