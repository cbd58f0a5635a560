"""Mirrored bus checkpoints follow their group (prune is not held back by a stale one),
unowned ones are reported and named; dead-letter ids are shown whole and accepted as a
unique prefix (ambiguous_id otherwise); ``query(status="all")``."""
from __future__ import annotations

import asyncio
import json

import pytest
from bus_helpers import eventually
from click.testing import CliRunner
from rich.console import Console

from syncline.bus import Bus, RetryPolicy
from syncline.cli import main
from syncline.cli.commands import bus as bus_cmd
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.bus import AmbiguousId, GroupStore, unowned_mirrors

FUTURE_US = 2**62  # "now" for a prune with retention 0: everything is expired


async def _consume_all(store, bus, n: int, **options) -> None:
    for i in range(n):
        await store.append("acme", f"inv/{i % 4}", [NewEvent("invoice.issued", {"i": i})])
    head = await store.head_position()

    async def nothing(d):
        return None

    m = await bus.group("billing", nothing, tenant="acme", partitions=2, lease_s=1, **options).start()
    gs = GroupStore(store, "acme", "billing")

    async def at_head() -> bool:
        return await gs.low_watermark() >= head

    await eventually(at_head, what="the group to checkpoint at the head")
    await m.abort()  # dies without mirroring again: the mirror is left at what it wrote at start (0)


async def test_prune_follows_the_groups_low_watermark_not_a_stale_mirror(store, bus):
    await _consume_all(store, bus, 30)
    assert await store.load_checkpoint("bus/billing", "acme") == 0  # stale: the group is at 30
    r = await store.prune(retention_s=0, now_us=FUTURE_US)
    # the old code: "30 held back", nothing deleted
    assert r.events_deleted > 0 and r.held_back_by_checkpoint == 0, r
    assert await store.load_checkpoint("bus/billing", "acme") == 30  # the mirror caught up
    assert r.details["unowned_checkpoints"] == []


async def test_a_member_that_leaves_mirrors_its_groups_watermark(store, bus):
    for i in range(10):
        await store.append("acme", f"inv/{i % 4}", [NewEvent("invoice.issued", {"i": i})])

    async def nothing(d):
        return None

    m = await bus.group("billing", nothing, tenant="acme", partitions=2).start()
    gs = GroupStore(store, "acme", "billing")

    async def at_head() -> bool:
        return await gs.low_watermark() >= 10

    await eventually(at_head, what="the group at the head")
    await m.stop()
    assert await store.load_checkpoint("bus/billing", "acme") == 10


async def test_unowned_mirror_is_reported_and_prune_names_what_holds_it_back(store, bus):
    await _consume_all(store, bus, 12)
    await store.save_checkpoint("bus/eu-only", "acme", 3)  # its group was deleted or renamed
    r = await store.prune(retention_s=0, now_us=FUTURE_US)
    assert r.held_back_by_checkpoint > 0
    assert r.details["held_back_by"] == {"name": "bus/eu-only", "tenant": "acme", "position": 3}
    assert r.details["unowned_checkpoints"] == [{"name": "bus/eu-only", "tenant": "acme", "position": 3}]
    assert await unowned_mirrors(store) == [{"name": "bus/eu-only", "tenant": "acme", "position": 3}]
    assert await store.load_checkpoint("bus/eu-only", "acme") == 3  # reported, not moved or dropped


def test_cli_prune_and_bus_groups_name_the_unowned_checkpoint(sqlite_url):
    async def setup():
        store = await open_store(sqlite_url, poll_interval_s=0.1)
        try:
            await _consume_all(store, Bus(store), 8)
            await store.save_checkpoint("bus/eu-only", "acme", 2)
        finally:
            await store.close()

    asyncio.run(setup())
    cli = CliRunner()
    res = cli.invoke(main, ["bus", "groups", "--db", sqlite_url, "--rate-window", "0"])
    assert res.exit_code == 0, res.output
    assert "unowned checkpoint 'bus/eu-only' (tenant 'acme') at position 2" in res.output
    res = cli.invoke(main, ["prune", "--db", sqlite_url, "--retention-days", "0"])
    assert res.exit_code == 0, res.output
    assert "held back by checkpoint 'bus/eu-only' (tenant 'acme') at position 2" in " ".join(res.output.split())


@pytest.fixture
def dead_letters(sqlite_url) -> list[str]:
    async def setup():
        store = await open_store(sqlite_url, poll_interval_s=0.1)
        bus = Bus(store)

        async def h(d):
            raise RuntimeError("bad payload")

        m = await bus.group("billing", h, tenant="acme", partitions=1,
                            policy=RetryPolicy(retry_delay_s=0.001, max_attempts=1)).start()
        for i in range(3):
            await store.append("acme", f"inv/{i}", [NewEvent("invoice.issued", {"i": i})])
        await eventually(lambda: m.stats.dead_lettered == 3, what="three dead letters")
        await m.stop()
        await _share_prefix(store, [e.id for e in await bus.dlq.query(scope="acme", status="all")][1:])
        ids = [e.id for e in await bus.dlq.query(scope="acme", status="all")]
        assert len(ids) == 3
        assert [e.id for e in await bus.dlq.query(status=["dead", "all"])] == ids
        await store.close()
        return ids

    return asyncio.run(setup())


async def _share_prefix(store, ids: list[str]) -> None:
    """Ids are random (UUIDv4): give these a common 9-character prefix, as ids sometimes do."""
    from sqlalchemy import update

    from syncline.store.bus_schema import bus_dead_letters as d

    async with store.engines[0].begin() as conn:
        for i in ids:
            await conn.execute(update(d).where(d.c.id == i).values(id="abcd1234-" + i[9:]))


def test_dlq_table_shows_whole_ids_at_80_columns(sqlite_url, dead_letters, monkeypatch):
    monkeypatch.setattr(bus_cmd, "console", Console(width=80))
    res = CliRunner().invoke(main, ["bus", "dlq", "list", "--db", sqlite_url])
    assert res.exit_code == 0, res.output
    assert all(i in res.output for i in dead_letters), res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80


def _common_prefix(ids: list[str]) -> str:
    n = 0
    while all(len(i) > n and i[n] == ids[0][n] for i in ids):
        n += 1
    return ids[0][:n]


def test_dlq_commands_take_a_unique_prefix_and_refuse_an_ambiguous_one(sqlite_url, dead_letters):
    cli = CliRunner()
    first, second, third = dead_letters
    common = _common_prefix([second, third])
    assert common == "abcd1234-" and not first.startswith("abcd")
    unique = first[:5]

    res = cli.invoke(main, ["bus", "dlq", "show", "--db", sqlite_url, unique])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["id"] == first
    res = cli.invoke(main, ["bus", "dlq", "edit", "--db", sqlite_url, unique, "--data", '{"i": 0, "fixed": true}'])
    assert res.exit_code == 0 and f"edited {first}" in res.output, res.output
    res = cli.invoke(main, ["bus", "dlq", "requeue", "--db", sqlite_url, unique.upper()])
    assert res.exit_code == 0 and f"requeued {first}" in res.output, res.output

    res = cli.invoke(main, ["bus", "dlq", "discard", "--db", sqlite_url, common[:4], "--reason", "x"])
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "ambiguous_id" in out and second in out and third in out
    for bad, code in ((common[:3], "invalid"), ("ffffffff", "not_found")):
        res = cli.invoke(main, ["bus", "dlq", "show", "--db", sqlite_url, bad])
        assert res.exit_code == 2 and code in res.output, res.output
    # nothing was discarded by the refused call
    res = cli.invoke(main, ["bus", "dlq", "list", "--db", sqlite_url, "--status", "all", "--json"])
    assert sorted(e["status"] for e in json.loads(res.output)) == ["dead", "dead", "requeued"]


async def test_resolve_in_python_names_candidates(store, bus):
    async def h(d):
        raise RuntimeError("no")

    m = await bus.group("billing", h, tenant="acme", partitions=1,
                        policy=RetryPolicy(retry_delay_s=0.001, max_attempts=1)).start()
    for i in range(2):
        await store.append("acme", f"inv/{i}", [NewEvent("invoice.issued", {"i": i})])
    await eventually(lambda: m.stats.dead_lettered == 2, what="two dead letters")
    await m.stop()
    await _share_prefix(store, [e.id for e in await bus.dlq.query(status="all")])
    ids = [e.id for e in await bus.dlq.query(status="all")]
    with pytest.raises(AmbiguousId) as e:
        await bus.dlq.resolve(_common_prefix(ids))
    assert e.value.code == "ambiguous_id" and e.value.details["candidates"] == sorted(ids)
    assert await bus.dlq.resolve(ids[1]) == ids[1]
    with pytest.raises(Exception) as nf:
        await bus.dlq.resolve(ids[1], scope="globex")  # another tenant's view cannot see it
    assert nf.value.code == "not_found"
