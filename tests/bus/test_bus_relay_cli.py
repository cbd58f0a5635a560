"""The Redis Streams relay (idempotent re-publishing) and the `syncline bus` commands."""
from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis
from bus_helpers import eventually
from click.testing import CliRunner

from syncline.bus import Bus, RetryPolicy
from syncline.cli import main
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.bus import GroupStore


async def test_relay_publishes_with_position_ids_and_republishing_is_idempotent(pg_clean_url, redis_client_url):
    store = await open_store(pg_clean_url, poll_interval_s=0.1)
    r = aioredis.from_url(redis_client_url)
    bus = Bus(store)
    try:
        for i in range(25):
            await store.append("acme", f"order/{i % 5}", [NewEvent("order.placed", {"i": i})])
        await store.append("globex", "order/1", [NewEvent("order.placed", {"i": -1})])
        relay = bus.relay_to_redis(redis_client_url, name="orders", tenant="acme", key="acme:orders")
        assert await relay.run_once() == 25
        entries = await r.xrange("acme:orders")
        assert len(entries) == 25
        page = await store.read_log("acme", after=0, limit=100)
        assert [e[0].decode() for e in entries] == [f"{ev.position}-0" for ev in page.events]
        assert {e[1][b"id"].decode() for e in entries} == {ev.id for ev in page.events}
        # a crash after XADD but before the checkpoint: publish everything again
        await store.save_checkpoint(relay.checkpoint_name, "acme", 0)
        assert await relay.run_once() == 25
        assert relay.duplicates == 25 and await r.xlen("acme:orders") == 25
        # live: the running relay follows the log
        await relay.start()
        await store.append("acme", "order/9", [NewEvent("order.placed", {"i": 99})])

        async def arrived() -> bool:
            return await r.xlen("acme:orders") == 26

        await eventually(arrived, what="the live event in Redis")
        await relay.stop()
    finally:
        await r.aclose()
        await store.close()


def test_cli_lists_groups_and_manages_dead_letters(sqlite_url):
    async def setup():
        store = await open_store(sqlite_url, poll_interval_s=0.1)
        bus = Bus(store)

        async def h(d):
            if d.event.data.get("bad"):
                raise RuntimeError("bad payload")

        m = await bus.group("billing", h, tenant="acme", partitions=2,
                            policy=RetryPolicy(retry_delay_s=0.01)).start()
        for i in range(4):
            await store.append("acme", f"inv/{i}", [NewEvent("invoice.issued", {"i": i, "bad": i % 2 == 1})])
        await eventually(lambda: m.stats.dead_lettered == 2, what="two dead letters")
        # the dead-lettering appended $dlq/ audit events: let the group checkpoint past them
        head = await store.head_position()
        gs = GroupStore(store, "acme", "billing")

        async def at_head() -> bool:
            return await gs.low_watermark() >= head

        await eventually(at_head, what="the group to checkpoint at the head")
        await m.stop()
        await store.close()

    asyncio.run(setup())
    cli = CliRunner()
    res = cli.invoke(main, ["bus", "groups", "--db", sqlite_url, "--json"])
    assert res.exit_code == 0, res.output
    [g] = json.loads(res.output)
    assert g["group"] == "billing" and g["scope"] == "acme" and g["lag"] == 0
    res = cli.invoke(main, ["bus", "groups", "--db", sqlite_url])
    assert res.exit_code == 0 and "billing" in res.output

    res = cli.invoke(main, ["bus", "dlq", "list", "--db", sqlite_url, "--group", "billing", "--json"])
    entries = json.loads(res.output)
    assert len(entries) == 2 and all(e["attempts"] == 3 for e in entries)
    first, second = entries
    res = cli.invoke(main, ["bus", "dlq", "show", "--db", sqlite_url, first["id"]])
    assert res.exit_code == 0 and "RuntimeError: bad payload" in res.output and "Traceback" in res.output
    res = cli.invoke(main, ["bus", "dlq", "edit", "--db", sqlite_url, first["id"], "--data", '{"i": 1, "bad": false}'])
    assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["bus", "dlq", "requeue", "--db", sqlite_url, first["id"]])
    assert res.exit_code == 0 and "requeued" in res.output
    res = cli.invoke(main, ["bus", "dlq", "discard", "--db", sqlite_url, second["id"], "--reason", "test data"])
    assert res.exit_code == 0 and "discarded" in res.output
    res = cli.invoke(main, ["bus", "dlq", "requeue", "--db", sqlite_url, second["id"]])
    assert res.exit_code == 2 and "invalid" in res.output  # discarded entries stay discarded
    res = cli.invoke(main, ["bus", "dlq", "list", "--db", sqlite_url, "--status", "all", "--json"])
    assert sorted(e["status"] for e in json.loads(res.output)) == ["discarded", "requeued"]

    async def redeliver():  # a member that comes back delivers the requeued entry
        store = await open_store(sqlite_url, poll_interval_s=0.1)
        bus = Bus(store)
        got = []

        async def h(d):
            got.append((d.event.id, d.event.data, d.dead_letter_id))

        m = await bus.group("billing", h, tenant="acme", partitions=2, lease_s=0.6).start()
        await eventually(lambda: len(got) == 1, what="the requeued delivery")
        await m.stop()
        await store.close()
        return got

    [(eid, data, dl)] = asyncio.run(redeliver())
    assert eid == first["event_id"] and data == {"i": 1, "bad": False} and dl == first["id"]
