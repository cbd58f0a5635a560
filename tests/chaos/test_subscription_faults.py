"""A live subscription's reads failing, deterministically (the PostgreSQL chaos test hits
these only when a read lands in the database's shutdown or startup window):

- the store is unavailable for a while: the subscription waits at its cursor, the
  connection stays up, and the events written meanwhile arrive afterwards;
- any other error: the server closes the connection (it used to end the subscription
  and leave a client that looked online but never heard of new events again), and the
  client reconnects and resubscribes from its position.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
from chaos_support import SECRET, token
from waiting import until, wait_for

from syncline.api.app import create_app
from syncline.api.settings import Settings
from syncline.clientkit.client import SynclineClient
from syncline.engine.errors import StoreUnavailable, SynclineError
from syncline.server import make_server


class FlakyReads:
    """Makes the gateway store's ``read_log`` raise the queued errors first, for the
    subscriptions' reads: the gateway's activity projector reads across tenants
    (``all_tenants``) and is left alone here; its faults are tested in
    tests/api/test_api_activity.py."""

    def __init__(self, store: Any) -> None:
        self.faults: list[Exception] = []
        self.raised = 0
        real = store.read_log

        async def read_log(*args: Any, **kwargs: Any):
            if self.faults and not kwargs.get("all_tenants"):
                self.raised += 1
                raise self.faults.pop(0)
            return await real(*args, **kwargs)

        store.read_log = read_log  # on the instance: running subscriptions hold the store itself


class ThreadGateway:
    """The gateway in a thread (its own loop), so the test can reach into its objects."""

    def __init__(self, db: str) -> None:
        settings = Settings(database_url=db, redis_url=None, jwt_secret=SECRET, jwt_algorithm="HS256",
                            jwt_public_key=None, batch_window_ms=5.0, poll_interval_s=0.2,
                            rate_limit_messages=1_000_000, shutdown_grace_s=1.0, webhook_url=None)
        self.app = create_app(settings)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = make_server(self.app, "127.0.0.1", self.sock.getsockname()[1])
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    def start(self) -> "ThreadGateway":
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 20, "the gateway to start")
        assert self.thread.is_alive()
        return self

    def flaky_reads(self) -> FlakyReads:
        return FlakyReads(self.app.state.gateway.store)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def gateway(tmp_path):
    g = ThreadGateway(f"sqlite+aiosqlite:///{tmp_path}/faults.db").start()
    yield g
    g.stop()


async def writes_reach_bob(gateway, tmp_path, faults: list[Exception]) -> SynclineClient:
    alice = SynclineClient(gateway.url, token("alice"), user="alice", queue_path=tmp_path / "alice.db")
    bob = SynclineClient(gateway.url, token("bob"), user="bob", queue_path=tmp_path / "bob.db")
    await alice.start()
    await bob.start()
    try:
        alice.set("rec/faults/1", {"before": 1})
        await until(lambda: bob.get("rec/faults/1") == {"before": 1}, 20, "bob to see the first write")
        flaky = gateway.flaky_reads()
        flaky.faults.extend(faults)  # the next reads of both subscriptions fail
        await until(lambda: flaky.raised == len(faults), 20, "the subscriptions to hit the faults")
        alice.set("rec/faults/1", {"after": 2})
        await until(lambda: bob.get("rec/faults/1") == {"before": 1, "after": 2}, 20,
                    "bob to see the write made after the faults")
        await alice.wait_synced(20)
        return bob
    finally:
        await alice.close()
        await bob.close()


async def test_subscription_waits_out_an_unavailable_store(gateway, tmp_path):
    bob = await writes_reach_bob(gateway, tmp_path, [StoreUnavailable("the database is restarting")] * 4)
    assert bob.stats["connects"] == 1  # waited at its cursor: no reconnect was needed


async def test_subscription_failing_otherwise_closes_the_connection_and_the_client_resumes(gateway, tmp_path):
    bob = await writes_reach_bob(gateway, tmp_path, [SynclineError("database error: Error")] * 2)
    assert bob.stats["connects"] >= 2
