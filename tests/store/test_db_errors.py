"""Driver errors that mean "the database is going away or coming back" map to
StoreUnavailable (retried, waited out), not to an internal error (which ended live
subscriptions when PostgreSQL was stopped: the chaos test's intermittent failure)."""
from __future__ import annotations

import asyncpg.exceptions as pg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi as dbapi

from syncline.engine.errors import StoreUnavailable, SynclineError
from syncline.store.errors import map_db_error


def wrapped(err: Exception) -> sa_exc.DBAPIError:
    """As SQLAlchemy's asyncpg dialect raises it: a generic DBAPIError, connection not invalidated."""
    return sa_exc.DBAPIError("SELECT 1", None, dbapi.Error(err.args[0], err))


@pytest.mark.parametrize("err", [
    pg.CannotConnectNowError("the database system is shutting down"),
    pg.CannotConnectNowError("the database system is starting up"),
    pg.AdminShutdownError("terminating connection due to administrator command"),
    pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    pg.TooManyConnectionsError("sorry, too many clients already"),
])
@pytest.mark.parametrize("wrap", [False, True], ids=["raw", "sqlalchemy"])
def test_server_going_away_is_unavailable(err, wrap):
    mapped = map_db_error(wrapped(err) if wrap else err)
    assert isinstance(mapped, StoreUnavailable)
    assert err.sqlstate in mapped.message and "SELECT" not in mapped.message


@pytest.mark.parametrize("wrap", [False, True], ids=["raw", "sqlalchemy"])
def test_a_query_error_stays_an_error(wrap):
    err = pg.UniqueViolationError("duplicate key value violates unique constraint")
    mapped = map_db_error(wrapped(err) if wrap else err)
    assert type(mapped) is SynclineError
