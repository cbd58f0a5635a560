"""Map driver exceptions onto Syncline's typed errors, once, at the adapter boundary."""
from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import Any, Awaitable, Callable, TypeVar

from sqlalchemy import exc as sa_exc

from syncline.engine.errors import InvalidValue, StoreUnavailable, SynclineError

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# SQLSTATEs that mean "the server is going away, restarting or full", not "this query is
# wrong": class 08 (connection exception), 57P01 admin_shutdown (a fast stop terminates the
# session), 57P02 crash_shutdown, 57P03 cannot_connect_now ("the database system is shutting
# down / starting up"), 53300 too_many_connections.
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def _sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of an asyncpg error, raw or as SQLAlchemy wraps it (``e.orig``)."""
    for candidate in (e, getattr(e, "orig", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def map_db_error(e: BaseException) -> SynclineError:
    if isinstance(e, SynclineError):
        return e
    state = _sqlstate(e)
    if state is not None and (state.startswith("08") or state in UNAVAILABLE_SQLSTATES):
        reason = str(getattr(e, "orig", None) or e)[:200]  # the driver's words, not the SQL
        return StoreUnavailable(f"the database is unavailable (SQLSTATE {state}): {reason}")
    if (state is not None and state.startswith("22")) or isinstance(e, (OverflowError, UnicodeEncodeError)):
        # SQLSTATE class 22 (data exception: out of range, NUL byte, too long...) or the
        # SQLite driver's OverflowError: the caller's value, not the store, is at fault.
        return InvalidValue("a value does not fit the event store (a number out of range, text it cannot hold)")
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
