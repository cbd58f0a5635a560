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

from .doorbell_listener import ListeningDoorbell
from .pg_writer import PG_NOTIFY_CHANNEL

log = logging.getLogger("syncline.store.postgres")


def create_engine(url: str, *, pool_size: int = 10, pre_ping: bool = True) -> AsyncEngine:
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping)


def create_page_engine(url: str) -> AsyncEngine:
    """The pool the store reads log pages through (store/sql.py ``_fetch_page``): without
    the pre-ping, a round trip per checkout that cost a bus member or a tail about as
    much as the page query itself when a page holds a few events. A connection that
    went away fails its page read with one of ``PAGE_DISCONNECTS`` instead; the store
    drops it and reads the page again on a fresh one (what the pre-ping would have done)."""
    return create_engine(url, pre_ping=False)


# How a pooled connection that is gone fails (server restarted or connection dropped):
# the socket, asyncpg's "connection is closed", and the server's shutdown notices.
PAGE_DISCONNECTS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
)


def plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgNotifyDoorbell(ListeningDoorbell):
    """A local doorbell that also rings when any process commits to the same database."""

    _task_name = "syncline-pg-listen"
    _log = log
    _lost_what = "LISTEN connection"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._dsn = plain_dsn(url)
        self._conn: asyncpg.Connection | None = None

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.ring_nowait(int(payload))

    async def _subscribe(self) -> None:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(PG_NOTIFY_CHANNEL, self._on_notify)

    async def _deliver(self) -> None:
        # Notifications arrive through _on_notify; this only waits for the connection to end.
        while not self._conn.is_closed():
            await asyncio.sleep(1.0)  # asyncpg has no "wait until closed"; poll the flag

    async def _unsubscribe(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=2.0)  # bounded: asyncpg aborts the socket if the server is gone
