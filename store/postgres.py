"""PostgreSQL: the asyncpg engine and the LISTEN/NOTIFY doorbell.

Append transactions call pg_notify() (store/sql.py); PostgreSQL delivers the
notification only when the transaction commits, so a ring never runs ahead of the
data. The listener keeps one dedicated connection and reconnects with backoff; while
it is down, tails fall back to polling.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .doorbell import LocalDoorbell
from .pg_writer import PG_NOTIFY_CHANNEL

log = logging.getLogger("syncline.store.postgres")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgNotifyDoorbell(LocalDoorbell):
    """A local doorbell that also rings when any process commits to the same database."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._dsn = plain_dsn(url)
        self._task: asyncio.Task | None = None
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="syncline-pg-listen")

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.ring_nowait(int(payload))

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                self._conn = await asyncpg.connect(self._dsn)
                await self._conn.add_listener(PG_NOTIFY_CHANNEL, self._on_notify)
                self.connected.set()
                delay = 0.1
                while not self._conn.is_closed():
                    await asyncio.sleep(1.0)  # asyncpg has no "wait until closed"; poll the flag
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database went away: tails poll meanwhile
                log.warning("LISTEN connection lost (%s); retrying in %.1fs", type(e).__name__, delay)
            finally:
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close()
        await super().close()
