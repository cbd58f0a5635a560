"""Chaos with real processes (issue 7): connections cut while events stream, the server
killed with SIGKILL under load, Redis and PostgreSQL restarted under connected clients.
After each: no acknowledged write is lost and the clients converge."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess

import httpx
import pytest
from chaos_support import CuttableProxy, Gateway, RedisServer, token
from waiting import until

from syncline.clientkit.client import SynclineClient
from syncline.store import open_store

pytestmark = pytest.mark.slow
RECORDS = 8


def field_writes(client: SynclineClient, start: int, n: int, prefix: str = "f") -> None:
    """Each op writes its own field: after healing, every acknowledged op must be visible."""
    for i in range(start, start + n):
        client.set(f"rec/chaos/{i % RECORDS}", {f"{prefix}{i}": i})


def server_records(gw: Gateway, user: str = "alice") -> dict[str, dict]:
    out = {}
    for r in range(RECORDS):
        resp = httpx.get(f"{gw.url}/v1/records/chaos/{r}", headers={"Authorization": f"Bearer {token(user)}"},
                         timeout=5)
        body = resp.json()
        out[f"rec/chaos/{r}"] = body.get("values", body) if resp.status_code == 200 else {}
    return out


def expected(n: int, prefix: str = "f") -> dict[str, dict]:
    want: dict[str, dict] = {f"rec/chaos/{r}": {} for r in range(RECORDS)}
    for i in range(n):
        want[f"rec/chaos/{i % RECORDS}"][f"{prefix}{i}"] = i
    return want


def client_state(c: SynclineClient) -> str:
    core = c.core
    return (f"{core.user}: state={core.state} transport={c.transport} position={core.position} head={core.head} "
            f"queued={len(c.queue)} inflight={core._inflight!r} sent_seq={core._sent_seq} stats={c.stats}")


def diagnostics(clients, gw: Gateway) -> str:
    """What every client and the gateway were doing: printed when convergence times out."""
    gw.dump_tasks()
    lines = [client_state(c) for c in clients]
    try:
        lines.append(f"readyz: {gw.ready()}")
    except Exception as e:  # noqa: BLE001 - diagnostics only
        lines.append(f"readyz failed: {e!r}")
    lines.append(f"--- gateway log ({gw.log_path}) ---")
    lines.append(gw.log_tail(400))
    return "\n".join(lines)


async def converged(clients, gw: Gateway, want: dict, timeout: float = 60) -> None:
    try:
        for c in clients:
            await c.wait_synced(timeout)
        await until(lambda: all(c.get(s) == v for c in clients for s, v in want.items()), timeout,
                    "every client to show every acknowledged write")
    except TimeoutError:
        print(diagnostics(clients, gw))
        raise
    assert server_records(gw) == want


async def test_connections_cut_at_random_while_events_stream(tmp_path):
    gw = Gateway(f"sqlite+aiosqlite:///{tmp_path}/chaos.db", tmp_path).start()
    proxy = await CuttableProxy(gw.port).start()
    rng = random.Random(7)
    alice = SynclineClient(proxy.url, token("alice"), user="alice", queue_path=tmp_path / "alice.db")
    bob = SynclineClient(proxy.url, token("bob"), user="bob", queue_path=tmp_path / "bob.db")
    try:
        await alice.start()
        await bob.start()
        total = 0
        for _ in range(12):  # write in bursts, cutting every connection between them
            n = rng.randint(10, 40)
            field_writes(alice, total, n)
            total += n
            await asyncio.sleep(rng.uniform(0.0, 0.15))  # let part of the burst get through, then cut
            proxy.cut()
        assert proxy.cuts == 12
        await converged([alice, bob], gw, expected(total))
        assert alice.pending == 0
    finally:
        await alice.close()
        await bob.close()
        await proxy.close()
        gw.stop()


async def test_server_killed_under_load_and_restarted(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/chaos.db"
    gw = Gateway(db, tmp_path).start()
    alice = SynclineClient(gw.url, token("alice"), user="alice", queue_path=tmp_path / "alice.db")
    bob = SynclineClient(gw.url, token("bob"), user="bob", queue_path=tmp_path / "bob.db")
    try:
        await alice.start()
        await bob.start()
        field_writes(alice, 0, 300)
        await until(lambda: alice.pending < 250, 30, "some ops to be acknowledged")
        gw.kill9()  # under load: part of the queue is committed, part is in flight, part unsent
        field_writes(alice, 300, 100)  # the user keeps working while the server is gone
        restarted = Gateway(db, tmp_path, port=gw.port).start()
        await converged([alice, bob], restarted, expected(400))
        restarted.stop()
        store = await open_store(db)
        try:
            assert (await store.verify()).ok
        finally:
            await store.close()
    finally:
        await alice.close()
        await bob.close()
        gw.kill9()


async def test_redis_stopped_and_restarted_under_connected_clients(pg_clean_url, tmp_path):
    redis = RedisServer().start()
    gw1 = Gateway(pg_clean_url, tmp_path, redis=redis.url).start()
    gw2 = Gateway(pg_clean_url, tmp_path, redis=redis.url).start()
    alice = SynclineClient(gw1.url, token("alice"), user="alice", queue_path=tmp_path / "alice.db")
    bob = SynclineClient(gw2.url, token("bob"), user="bob", queue_path=tmp_path / "bob.db")
    try:
        await alice.start()
        await bob.start()
        field_writes(alice, 0, 50)
        await converged([alice, bob], gw1, expected(50))
        redis.stop()
        await until(lambda: gw1.ready()["dependencies"]["redis"]["state"] != "up", 30, "readyz to report redis down")
        assert gw1.ready()["degradations"]
        field_writes(alice, 50, 50)  # realtime fan-out is degraded: the log still delivers
        await converged([alice, bob], gw2, expected(100))
        redis = RedisServer(port=redis.port).start()  # same port: the gateways reconnect by themselves
        await until(lambda: gw1.ready()["dependencies"]["redis"]["state"] == "up"
                    and gw2.ready()["dependencies"]["redis"]["state"] == "up", 30, "redis to be up again")
        field_writes(alice, 100, 50)
        await converged([alice, bob], gw2, expected(150))
    finally:
        await alice.close()
        await bob.close()
        gw1.stop()
        gw2.stop()
        redis.stop()


async def test_postgres_stopped_and_started_under_load(pg_clean_url, tmp_path):
    pg_ctl, data = os.environ.get("SYNCLINE_TEST_PG_CTL"), os.environ.get("SYNCLINE_TEST_PG_DATA")
    if not pg_ctl or not data:
        pytest.skip("needs scripts/services.sh (SYNCLINE_TEST_PG_CTL and SYNCLINE_TEST_PG_DATA)")
    run_as = os.environ.get("SYNCLINE_TEST_PG_RUN_AS", "").split()
    gw = Gateway(pg_clean_url, tmp_path).start()
    alice = SynclineClient(gw.url, token("alice"), user="alice", queue_path=tmp_path / "alice.db")
    bob = SynclineClient(gw.url, token("bob"), user="bob", queue_path=tmp_path / "bob.db")
    try:
        await alice.start()
        await bob.start()
        field_writes(alice, 0, 200)
        await until(lambda: alice.pending < 180, 30, "some ops to be acknowledged")
        # No pipes: the started postmaster inherits them and would keep them open forever.
        pg = [*run_as, pg_ctl, "-D", data, "-w"]
        run = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        assert (await asyncio.to_thread(subprocess.run, [*pg, "-m", "fast", "stop"], **run)).returncode == 0
        await until(lambda: gw.ready()["dependencies"]["store"]["state"] != "up", 30, "readyz to report the store down")
        field_writes(alice, 200, 100)  # the user keeps working through the outage
        await asyncio.sleep(0.5)  # let the ops hit the dead database (they must be queued, not lost)
        assert alice.pending > 0
        assert (await asyncio.to_thread(subprocess.run, [*pg, "start"], **run)).returncode == 0
        await converged([alice, bob], gw, expected(300), timeout=90)
        assert gw.ready()["dependencies"]["store"]["state"] == "up"
    finally:
        await alice.close()
        await bob.close()
        gw.stop()
