"""Retries, ack timeouts, nacks, the dead-letter queue, requeue and the checkpoint."""
from __future__ import annotations

import asyncio

import pytest
from bus_helpers import eventually

from syncline.bus import RetryPolicy, dlq_stream
from syncline.engine.errors import ValidationError
from syncline.engine.events import NewEvent
from syncline.store.bus import GroupStore

FAST = RetryPolicy(retry_delay_s=0.01, ack_timeout_s=2.0)


def poison_handler(log: list):
    async def handle(d):
        log.append((d.event.id, d.event.data, d.attempt, d.dead_letter_id))
        if d.event.data.get("poison"):
            raise ValueError(f"cannot digest {d.event.data['n']}")

    return handle


async def test_poison_event_goes_to_the_dlq_then_edit_and_requeue(store, bus):
    log: list = []
    m = await bus.group("billing", poison_handler(log), tenant="acme", partitions=4, policy=FAST,
                        lease_s=1.5).start()
    try:
        for n in range(10):
            await store.append("acme", f"inv/{n % 3}", [NewEvent("invoice.issued", {"n": n, "poison": n == 4})])
        head = await store.head_position()
        gs = GroupStore(store, "acme", "billing")
        await eventually(lambda: m.stats.handled == 9 and m.stats.dead_lettered == 1, what="9 handled + 1 DLQ")
        await eventually(lambda: _low(gs, head), what="the checkpoint to pass the poison event")

        [entry] = await bus.dlq.query(scope="acme", group="billing")
        poison_id = next(eid for eid, data, _, _ in log if data["poison"])
        assert entry.event_id == poison_id and entry.attempts == 3
        assert [a for eid, _, a, _ in log if eid == poison_id] == [1, 2, 3]
        assert "ValueError: cannot digest 4" in entry.reason
        assert "Traceback" in entry.trace and "poison_handler" not in entry.trace and "handle" in entry.trace
        assert entry.member == m.id and entry.group == "billing" and entry.status == "dead"
        assert entry.first_failure_us <= entry.last_failure_us
        assert entry.event["data"] == {"n": 4, "poison": True} and entry.event["stream"] == "inv/1"

        positions_before = await _positions(gs)
        await bus.dlq.edit(entry.id, {"n": 4, "poison": False}, by="ops@acme")
        await bus.dlq.requeue(entry.id, by="ops@acme")
        await eventually(lambda: m.stats.redelivered_from_dlq == 1, what="the requeued event to be handled")
        again = [x for x in log if x[3] == entry.id]
        assert again[-1][0] == poison_id  # the ORIGINAL event id
        assert again[-1][1] == {"n": 4, "poison": False}  # with the edited payload
        assert (await bus.dlq.get(entry.id)).status == "resolved"
        # requeue moved no checkpoint backwards (nothing of the log was delivered again), and
        # forwards only over the new $dlq/ audit events, which the group skips
        head = await store.head_position()
        await eventually(lambda: _low(gs, head), what="checkpoints at the head")
        after = await _positions(gs)
        assert all(a >= b for a, b in zip(after, positions_before)) and set(after) == {head}
        system = await store.read_stream("acme", dlq_stream("billing"))
        assert all(e.position > positions_before[0] for e in system[1:])
        with pytest.raises(ValidationError):
            await bus.dlq.requeue(entry.id)  # resolved entries cannot be requeued again

        actions = [e.type for e in await store.read_stream("acme", dlq_stream("billing"))]
        assert actions == ["dlq.dead_lettered", "dlq.edited", "dlq.requeued", "dlq.resolved"]
        assert m.stats.handled == 9  # the group moved on and never re-read the log for the requeue
    finally:
        await m.stop()


async def test_discard_needs_a_reason_and_is_recorded(store, bus):
    m = await bus.group("g", poison_handler([]), tenant="acme", partitions=2, policy=FAST, lease_s=1.5).start()
    try:
        await store.append("acme", "inv/1", [NewEvent("invoice.issued", {"n": 1, "poison": True})])
        await eventually(lambda: m.stats.dead_lettered == 1, what="a dead letter")
        [entry] = await bus.dlq.query(scope="acme", group="g", type="invoice.issued")
        with pytest.raises(ValidationError):
            await bus.dlq.discard(entry.id, "")
        await bus.dlq.discard(entry.id, "duplicate invoice, voided", by="ops")
        got = await bus.dlq.get(entry.id)
        assert got.status == "discarded" and got.status_reason == "duplicate invoice, voided"
        assert await bus.dlq.query(scope="acme", group="g") == []
        assert len(await bus.dlq.query(scope="acme", status=["discarded"])) == 1
        assert await bus.dlq.query(scope="other") == []  # another tenant sees nothing
        types = [e.type for e in await store.read_stream("acme", dlq_stream("g"))]
        assert types == ["dlq.dead_lettered", "dlq.discarded"]
    finally:
        await m.stop()


async def test_requeued_event_that_fails_again_returns_to_the_dlq(store, bus):
    m = await bus.group("g", poison_handler([]), tenant="acme", partitions=2, policy=FAST, lease_s=1.5).start()
    try:
        await store.append("acme", "inv/1", [NewEvent("invoice.issued", {"n": 1, "poison": True})])
        await eventually(lambda: m.stats.dead_lettered == 1, what="a dead letter")
        [entry] = await bus.dlq.query(scope="acme")
        await bus.dlq.requeue(entry.id)  # not edited: still poison
        await eventually(lambda: m.stats.dead_lettered == 2, what="the second dead-lettering")
        got = await bus.dlq.get(entry.id)
        assert got.status == "dead" and got.dead_count == 2 and got.attempts == 6
    finally:
        await m.stop()


async def test_ack_timeout_and_nack_with_delay_redeliver(store, bus):
    calls: list = []

    async def handle(d):
        calls.append((d.event.data["k"], d.attempt, asyncio.get_running_loop().time()))
        if d.event.data["k"] == "slow" and d.attempt == 1:
            await asyncio.sleep(5)  # past the ack timeout: cancelled, redelivered
        elif d.event.data["k"] == "nack" and d.attempt == 1:
            d.nack("not yet", delay_s=0.3)
        elif d.event.data["k"] == "manual":
            asyncio.get_running_loop().call_later(0.05, d.ack)  # acked from elsewhere, in time

    policy = RetryPolicy(ack_timeout_s=0.3, auto_ack=False, retry_delay_s=0.01)

    async def auto_ack(d):  # without auto_ack, returning normally is not an ack
        await handle(d)
        if d.event.data["k"] != "manual" and d.outcome is None:
            d.ack()

    m = await bus.group("g", auto_ack, tenant="acme", partitions=1, policy=policy, lease_s=1.5).start()
    try:
        for k in ("slow", "nack", "manual"):
            await store.append("acme", "s/1", [NewEvent("t.x", {"k": k})])
        await eventually(lambda: m.stats.handled == 3, what="all three handled")
        by = {}
        for k, a, t in calls:
            by.setdefault(k, []).append((a, t))
        assert [a for a, _ in by["slow"]] == [1, 2]
        assert [a for a, _ in by["nack"]] == [1, 2]
        assert by["nack"][1][1] - by["nack"][0][1] >= 0.29  # the nack's delay was honoured
        assert [a for a, _ in by["manual"]] == [1]
        assert m.stats.dead_lettered == 0
    finally:
        await m.stop()


async def _positions(gs: GroupStore) -> list[int]:
    async with gs._r.connect() as conn:
        from sqlalchemy import select

        from syncline.store.bus_schema import bus_partitions as p

        rows = await conn.execute(
            select(p.c.position).where(p.c.scope == gs.scope, p.c.group_name == gs.group).order_by(p.c.partition)
        )
        return list(rows.scalars())


async def _low(gs: GroupStore, head: int) -> bool:
    return await gs.low_watermark() >= head
