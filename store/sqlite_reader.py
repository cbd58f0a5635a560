"""The SQLite read path for events: stdlib sqlite3 connections in reader threads.

A page is one thread hop: the log head, the query and the decoding of its rows all
run in the thread, so the event loop only hops once per page. In WAL mode readers
never block the writer and are never blocked by it.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from sqlalchemy.engine import make_url

from .rows import decode_rows
from .sqlite import BUSY_TIMEOUT_MS

HEAD_SQL = "SELECT position FROM log_head WHERE id = 1"
READ_CACHE_KIB = 32 * 1024  # per reader connection
READ_MMAP_BYTES = 256 * 1024 * 1024


def _into(box: list[Any], fn: Callable[..., Any], args: tuple) -> None:
    box.append(fn(*args))


class SqliteReader:
    def __init__(self, url: str, threads: int = 2) -> None:
        self._path = make_url(url).database
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="syncline-sqlite-reader")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False, cached_statements=256)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA case_sensitive_like=ON")  # LIKE filters on streams and types
            # Read-side caching only (this connection never writes; durability is the
            # writer's): a 2 MiB page cache re-reads a log of tens of MB from the
            # OS on every pass, and mapped pages skip a copy per page read.
            db.execute(f"PRAGMA cache_size={-READ_CACHE_KIB}")
            db.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")
            self._local.db = db
            with self._lock:
                self._conns.append(db)
        return db

    def _fetch(
        self, sql: str, params: list[Any], upcasters, head_at: int | None, known: dict[str, str]
    ) -> tuple[int | None, list]:
        db = self._conn()
        head = None
        if head_at is not None:
            # The head first, then the rows up to it (see SqlEventStore.read_log).
            head = db.execute(HEAD_SQL).fetchone()[0]
            params[head_at] = head
        return head, decode_rows(db.execute(sql, params).fetchall(), upcasters, **known)

    def _fetch_rows(self, sql: str, params: list[Any]) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a reader thread; its result, which the executor's future does
        not keep.

        asyncio keeps a run_in_executor future referenced (by the handle that woke the
        awaiting task) until the event loop finishes that turn, after the caller has run
        on to its next await. A page held there was freed at that later, unrelated
        moment: after a 20,000-event read_stream, the next query's thread hop waited
        about 4 ms for the main thread to free the previous result (benchmarks/
        editing_trace.py's snapshot load; tens of ms for a bigger stream). Handed over
        through a list instead, the result is freed when its caller drops it.
        """
        box: list[Any] = []
        await asyncio.get_running_loop().run_in_executor(self._pool, _into, box, fn, args)
        return box.pop()

    async def fetch_rows(self, sql: str, params: list[Any]) -> list[tuple]:
        """Run ``sql`` and return its rows as the driver gives them (not events)."""
        return await self._run(self._fetch_rows, sql, params)

    async def fetch(self, sql: str, params: list[Any], upcasters=None) -> list:
        return (await self.fetch_page(sql, params, upcasters))[1]

    async def fetch_page(
        self, sql: str, params: list[Any], upcasters=None, head_at: int | None = None,
        known: dict[str, str] | None = None,
    ) -> tuple[int | None, list]:
        """Run ``sql`` and decode its rows (``known``: the tenant, and stream, that it
        binds and does not select; see store.rows.decode_rows). With ``head_at``, first
        read the log head and put it in ``params[head_at]``; returns (head or None, events)."""
        return await self._run(self._fetch, sql, params, upcasters, head_at, known or {})

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for db in self._conns:
                db.close()
            self._conns.clear()
