"""Fixtures for the process-level realtime tests (issue 13): real `syncline serve`
processes on one store, a private Redis that a test may kill, a round-robin TCP proxy,
JavaScript Yjs clients from npm.

Fixtures
--------
rt_gateways      session: how many gateways a cluster has (env SYNCLINE_RT_GATEWAYS, default 2;
                 run with 1 to check the harness against behaviour that works on one gateway)
redis_server     session: path of the redis-server binary (SYNCLINE_TEST_REDIS_SERVER)
private_redis    function: a started RedisProcess, stopped afterwards
pg_database      function: URL of a new PostgreSQL database, dropped afterwards
cluster_factory  function: ``make(db_url, redis=None, env=None, n=None, proxy=True)`` -> started
                 Cluster, closed afterwards
js_dir           session: a temp dir with yjs@13, y-websocket@3, ws@8 installed and the driver
                 (skipped only when node/npm are missing or the install fails)
js               function: a started JsDriver (one Node process), closed afterwards

When a test fails, the lines each gateway logged during it are added to the report.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cluster import LIVE, Cluster, RedisProcess, create_database, drop_database
from rtclients import JsDriver, install_js

LOG_MARKS = pytest.StashKey[dict]()
LOG_LINES = 120


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything here is ``slow`` (real processes); the services each test needs are marked
    as the root conftest does, so ``-m "not postgres and not redis"`` keeps the SQLite ones."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent != here:
            continue
        item.add_marker(pytest.mark.slow)
        names = set(getattr(item, "fixturenames", ()))
        if names & {"pg_server", "pg_database"}:
            item.add_marker(pytest.mark.postgres)
        if names & {"redis_server", "private_redis"}:
            item.add_marker(pytest.mark.redis)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    item.stash[LOG_MARKS] = {id(g): g.log_size() for g in LIVE}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        marks = item.stash.get(LOG_MARKS, {})
        for g in LIVE:
            lines = [ln for ln in g.log_text(since=marks.get(id(g), 0)).splitlines()
                     if "alembic.runtime.plugins" not in ln]
            text = "\n".join(lines[-LOG_LINES:])
            if text.strip():
                rep.sections.append((f"{g.name} (port {g.port}) log, last {LOG_LINES} lines of this test",
                                     text))


def _need(env: str, what: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    msg = f"{what}: {env} is not set (run `make test`, or `set -a; . var/services.env; set +a`)"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def rt_gateways() -> int:
    return int(os.environ.get("SYNCLINE_RT_GATEWAYS", "2"))


@pytest.fixture(scope="session")
def redis_server() -> str:
    path = os.environ.get("SYNCLINE_TEST_REDIS_SERVER", "").strip() or shutil.which("redis-server") or ""
    if not path:
        _need("SYNCLINE_TEST_REDIS_SERVER", "redis-server")
    return path


@pytest.fixture(scope="session")
def pg_server() -> str:
    return _need("SYNCLINE_TEST_PG_URL", "PostgreSQL")


@pytest.fixture
def private_redis(redis_server, tmp_path) -> RedisProcess:
    r = RedisProcess(redis_server, tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def pg_database(pg_server) -> str:
    url = create_database(pg_server)
    yield url
    drop_database(url)


@pytest.fixture
def cluster_factory(tmp_path, rt_gateways):
    made: list[Cluster] = []

    def make(db_url: str, *, redis: RedisProcess | None = None, env: dict[str, str] | None = None,
             n: int | None = None, proxy: bool = True, label: str = "gw") -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", db_url, n=n or rt_gateways, redis=redis, env=env,
                    proxy=proxy, label=label)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def js_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("yjs-js")
    why = install_js(d)
    if why:
        pytest.skip(why)
    return d


@pytest.fixture
async def js(js_dir) -> Any:
    driver = await JsDriver(js_dir).start()
    yield driver
    await driver.close()
