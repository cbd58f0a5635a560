"""Map driver exceptions onto Syncline's typed errors, once, at the adapter boundary."""
from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

from sqlalchemy import exc as sa_exc

from engine.errors import StoreUnavailable, SynclineError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def map_db_error(e: BaseException) -> SynclineError:
    if isinstance(e, SynclineError):
        return e
    if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sqlite3.OperationalError, OSError,
                      asyncio.TimeoutError, ConnectionError)):
        return StoreUnavailable(f"the event store is unavailable: {type(e).__name__}: {str(e)[:200]}")
    if isinstance(e, sa_exc.DBAPIError):
        if e.connection_invalidated:
            return StoreUnavailable("the database connection was lost")
        return SynclineError(f"database error: {type(e.orig).__name__ if e.orig else type(e).__name__}")
    # asyncpg raises its own connection errors when the server goes away
    name = type(e).__name__
    if "Connection" in name or "CannotConnectNow" in name or "InterfaceError" in name:
        return StoreUnavailable(f"the database connection failed: {name}")
    return SynclineError(f"unexpected store error: {name}: {str(e)[:200]}")


def db_errors(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except SynclineError:
            raise
        except Exception as e:
            raise map_db_error(e) from e

    return wrapper  # type: ignore[return-value]
