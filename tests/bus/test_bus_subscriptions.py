"""Broadcast, durable and group subscriptions: filters, tenancy, rebalancing, restarts."""
from __future__ import annotations

import pytest
from bus_helpers import eventually

from syncline.bus import RetryPolicy
from syncline.engine.errors import ValidationError
from syncline.engine.events import NewEvent
from syncline.engine.filters import EventFilter, Predicate
from syncline.store.bus import GroupStore

FAST = RetryPolicy(retry_delay_s=0.01, ack_timeout_s=2.0)


async def _mixed(store, tenant: str = "acme") -> None:
    """24 events: order.placed / order.shipped / user.created over order/ and user/ streams,
    with a country attribute."""
    for i in range(8):
        country = ("fr", "de", "us", "fr")[i % 4]
        await store.append(tenant, f"order/{i}", [
            NewEvent("order.placed", {"n": i, "customer": {"country": country}}),
            NewEvent("order.shipped", {"n": i}),
        ])
        await store.append(tenant, f"user/{i}", [NewEvent("user.created", {"n": i})])


async def test_filters_deliver_only_matching_events_and_checkpoint_past_the_rest(store, bus):
    got: dict[str, list] = {"types": [], "prefix": [], "where": [], "where_in": []}

    def collect(name):
        async def h(d):
            got[name].append(d.event)
        return h

    members = [
        bus.group("types", collect("types"), tenant="acme", partitions=2, filter=EventFilter(types=("order.sh*",))),
        bus.group("prefix", collect("prefix"), tenant="acme", partitions=2,
                  filter=EventFilter(stream_prefixes=("user/",))),
        bus.group("where", collect("where"), tenant="acme", partitions=2,
                  filter=EventFilter(types=("order.placed",), where=(Predicate("customer.country", "eq", "fr"),))),
        bus.group("where_in", collect("where_in"), tenant="acme", partitions=2,
                  filter=EventFilter(where=(Predicate("customer.country", "in", ["de", "us"]),))),
    ]
    for m in members:
        await m.start()
    try:
        await _mixed(store)
        await store.append("acme", "misc/1", [NewEvent("misc.noise", {"x": 1})])  # matches no filter
        head = await store.head_position()
        stores = [GroupStore(store, "acme", m.group) for m in members]

        async def all_at_head() -> bool:
            return all([await gs.low_watermark() >= head for gs in stores])

        await eventually(all_at_head, what="every filtered group to checkpoint at the head")
        assert len(got["types"]) == 8 and {e.type for e in got["types"]} == {"order.shipped"}
        assert len(got["prefix"]) == 8 and all(e.stream.startswith("user/") for e in got["prefix"])
        assert sorted(e.data["n"] for e in got["where"]) == [0, 3, 4, 7]
        assert sorted(e.data["n"] for e in got["where_in"]) == [1, 2, 5, 6]
        assert sum(m.stats.handled for m in members) == 8 + 8 + 4 + 4
    finally:
        for m in members:
            await m.stop()


async def test_tenant_isolation_and_explicit_all_tenants(store, bus):
    seen: dict[str, list] = {"acme": [], "globex": [], "platform": [], "broadcast": []}

    def collect(name):
        async def h(d):
            seen[name].append(d.event.tenant)
        return h

    with pytest.raises(ValidationError):
        bus.group("platform", collect("platform"))  # all tenants must be said explicitly
    with pytest.raises(ValidationError):
        bus.subscribe(collect("platform"))
    with pytest.raises(ValidationError):
        bus.group("x", collect("x"), tenant="acme", all_tenants=True)
    members = [
        bus.group("audit", collect("acme"), tenant="acme", partitions=2),
        bus.group("audit", collect("globex"), tenant="globex", partitions=2),  # same name, another tenant
        bus.group("platform", collect("platform"), all_tenants=True, partitions=2),
    ]
    sub = bus.subscribe(collect("broadcast"), tenant="globex", after=0)
    for m in members:
        await m.start()
    await sub.start()
    try:
        await _mixed(store, "acme")
        await store.append("globex", "order/1", [NewEvent("order.placed", {"n": 1})])
        await eventually(lambda: len(seen["platform"]) == 25 and len(seen["acme"]) == 24 and len(seen["globex"]) == 1
                         and len(seen["broadcast"]) == 1, what="deliveries")
        assert set(seen["acme"]) == {"acme"} and set(seen["globex"]) == {"globex"}
        assert set(seen["broadcast"]) == {"globex"}
        assert set(seen["platform"]) == {"acme", "globex"}
        groups = await bus.groups()
        assert {(g["scope"], g["group"]) for g in groups} == {("acme", "audit"), ("globex", "audit"), ("*", "platform")}
    finally:
        await sub.stop()
        for m in members:
            await m.stop()


async def test_broadcast_subscribers_each_see_everything_in_order(store, bus):
    a, b = [], []

    async def ha(d):
        a.append(d.event.position)

    async def hb(d):
        b.append(d.event.position)

    await store.append("acme", "s/0", [NewEvent("t.old", {})])  # before the subscriptions: not seen
    subs = [await bus.subscribe(ha, tenant="acme").start(), await bus.subscribe(hb, tenant="acme").start()]
    try:
        for i in range(30):
            await store.append("acme", f"s/{i % 4}", [NewEvent("t.new", {"i": i})])
        await eventually(lambda: len(a) == 30 and len(b) == 30, what="both subscribers")
        assert a == b == sorted(a)
    finally:
        for s in subs:
            await s.stop()


async def test_members_join_and_leave_and_the_group_rebalances(store, bus):
    handled: list = []

    async def h(d):
        handled.append((d.member, d.event.stream, d.event.version))

    opts = dict(tenant="acme", partitions=6, lease_s=0.6, policy=FAST)
    m1 = await bus.group("g", h, member_id="m1", **opts).start()
    assert m1.owned == list(range(6))
    m2 = await bus.group("g", h, member_id="m2", **opts).start()
    m3 = await bus.group("g", h, member_id="m3", **opts).start()
    members = [m1, m2, m3]
    try:
        await eventually(lambda: sorted(len(m.owned) for m in members) == [2, 2, 2], what="a 2/2/2 split")
        assert sorted(p for m in members for p in m.owned) == list(range(6))
        for i in range(60):
            await store.append("acme", f"s/{i % 12}", [NewEvent("t.x", {"i": i})])
        await eventually(lambda: len(handled) >= 60, what="60 events")
        await m2.stop()  # leaves: its partitions go to the others
        await eventually(lambda: sorted(len(m.owned) for m in (m1, m3)) == [3, 3], what="a 3/3 split")
        await m3.abort()  # dies: its lease expires and m1 takes everything
        await eventually(lambda: len(m1.owned) == 6, timeout=10, what="m1 to own everything")
        for i in range(60, 90):
            await store.append("acme", f"s/{i % 12}", [NewEvent("t.x", {"i": i})])
        await eventually(lambda: len({(s, v) for _, s, v in handled}) == 90, what="90 distinct events")
        seen_versions: dict[str, list[int]] = {}
        for _, s, v in handled:
            seen_versions.setdefault(s, []).append(v)
        for s, vs in seen_versions.items():  # in order per stream, repeats only as a suffix restart
            dedup = sorted(set(vs))
            assert dedup == list(range(1, len(dedup) + 1)), s
    finally:
        await m1.stop()


async def test_durable_subscription_resumes_where_it_stopped(store, bus):
    got: list[int] = []

    async def h(d):
        got.append(d.event.data["i"])

    for i in range(20):
        await store.append("acme", "s/1", [NewEvent("t.x", {"i": i})])
    d1 = await bus.durable("mailer", h, tenant="acme", lease_s=1.5).start()
    await eventually(lambda: len(got) == 20, what="the first 20")
    await d1.stop()
    for i in range(20, 35):
        await store.append("acme", "s/1", [NewEvent("t.x", {"i": i})])
    d2 = await bus.durable("mailer", h, tenant="acme", lease_s=1.5).start()
    try:
        await eventually(lambda: len(got) == 35, what="the next 15")
        assert got == list(range(35))  # resumed exactly after a clean stop: no loss, no repeat
        assert await store.load_checkpoint("bus/mailer", "acme") is not None
    finally:
        await d2.stop()
