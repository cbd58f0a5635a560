"""Consumer group state in the database: the group, its members, partition leases and checkpoints.

Membership protocol (every member runs it each heartbeat, lease_s / 3 apart):

1. upsert its own member row with ``expires_us = now + lease``, delete members whose
   row expired (they died without leaving), read the live members;
2. renew the leases of the partitions it owns (``owner = me``); a partition that is
   no longer returned was taken over after our lease lapsed: we stop handling it;
3. compute its fair share (members sorted by id; the first ``P % M`` get one more)
   and release partitions above it, or claim free or expired ones below it.

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so members in different processes
that claim at once take disjoint partitions instead of queueing on the same rows;
on SQLite the writer's ``BEGIN IMMEDIATE`` serializes them. Every claim bumps
``epoch``; checkpoint writes carry the epoch, so a member that lost a partition
(paused past its lease, say) cannot move the new owner's checkpoint.

Crashes count as attempts. Before a member hands events of a partition to its handler
it writes the partition's ``inflight`` mark (``mark_inflight``, one statement for all
its partitions, coalesced); a clean release resets it. A member that claims a
partition whose mark is above the checkpoint knows the previous owner died with that
range in hand, and handles the range carefully: each attempt is recorded in
``bus_attempts`` (``begin_attempt``) before the handler runs, so a handler that kills
its process leaves a count behind that the next owner reads; an event of that range
starts at attempt 2 (the dead owner may have been handling it). Failing events are
recorded that way on every retry too; only the first attempt of an event outside a
suspect range goes without a write, which is what keeps the common path cheap. One
recorded attempt runs at a time per process (bus/member.py), so a crash is
charged to one event, not to every handler that happened to be running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import and_, bindparam, delete, func, or_, select, update

from syncline.engine.codec import pack

from ..bus_schema import SCOPE_ALL, bus_attempts, bus_groups, bus_members, bus_partitions
from ..errors import db_errors
from ..schema import checkpoints, events, log_head
from ._db import engines, insert_for, now_us


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    epoch: int
    position: int
    inflight: int = 0  # the previous owner may have handed events up to here to its handler


@dataclass(frozen=True, slots=True)
class Attempt:
    event_id: str
    position: int
    attempts: int
    first_failure_us: int
    last_failure_us: int
    reason: str
    trace: str

    @property
    def crashed(self) -> bool:
        """The last attempt began and never finished: its worker died in the handler."""
        return self.reason.startswith(CRASH_REASON)


CRASH_REASON = "worker crashed"


@dataclass(frozen=True, slots=True)
class Membership:
    members: tuple[str, ...]  # live members, sorted
    owned: dict[int, Lease]

    def fair_share(self, member: str, partitions: int) -> int:
        if member not in self.members:
            return 0
        m = len(self.members)
        i = self.members.index(member)
        return partitions // m + (1 if i < partitions % m else 0)


class GroupStore:
    def __init__(self, store: Any, scope: str, group: str) -> None:
        self._w, self._r = engines(store)
        self.dialect = self._w.dialect.name
        self.scope = scope
        self.group = group
        self._key = and_(bus_partitions.c.scope == scope, bus_partitions.c.group_name == group)

    @db_errors
    async def ensure(self, partitions: int, filter_doc: Any = None, initial_position: int = 0) -> int:
        """Create the group and its partitions at ``initial_position`` unless they exist;
        return the partition count (an existing group keeps its own, and its checkpoints)."""
        ins = insert_for(self.dialect)
        now = now_us()
        async with self._w.begin() as conn:
            await conn.execute(
                ins(bus_groups)
                .values(scope=self.scope, group_name=self.group, partitions=partitions,
                        filter=pack(filter_doc) if filter_doc is not None else None, created_us=now)
                .on_conflict_do_nothing(index_elements=["scope", "group_name"])
            )
            n = (
                await conn.execute(
                    select(bus_groups.c.partitions).where(
                        bus_groups.c.scope == self.scope, bus_groups.c.group_name == self.group
                    )
                )
            ).scalar_one()
            await conn.execute(
                ins(bus_partitions).on_conflict_do_nothing(index_elements=["scope", "group_name", "partition"]),
                [
                    dict(scope=self.scope, group_name=self.group, partition=p, owner=None, epoch=0,
                         lease_until_us=0, position=initial_position, updated_us=now)
                    for p in range(n)
                ],
            )
        return n

    @db_errors
    async def heartbeat(self, member: str, host: str, pid: int, lease_us: int) -> Membership:
        now = now_us()
        ins = insert_for(self.dialect)
        m = bus_members.c
        async with self._w.begin() as conn:
            await conn.execute(
                ins(bus_members)
                .values(scope=self.scope, group_name=self.group, member=member, host=host[:128], pid=pid,
                        joined_us=now, heartbeat_us=now, expires_us=now + lease_us)
                .on_conflict_do_update(
                    index_elements=["scope", "group_name", "member"],
                    set_={"heartbeat_us": now, "expires_us": now + lease_us},
                )
            )
            mine = and_(m.scope == self.scope, m.group_name == self.group)
            await conn.execute(delete(bus_members).where(mine, m.expires_us < now))
            members = tuple((await conn.execute(select(m.member).where(mine).order_by(m.member))).scalars())
            rows = (
                await conn.execute(
                    update(bus_partitions)
                    .where(self._key, bus_partitions.c.owner == member)
                    .values(lease_until_us=now + lease_us)
                    .returning(bus_partitions.c.partition, bus_partitions.c.epoch, bus_partitions.c.position)
                )
            ).all()
        return Membership(members, {r.partition: Lease(r.partition, r.epoch, r.position) for r in rows})

    @db_errors
    async def claim(self, member: str, limit: int, lease_us: int) -> list[Lease]:
        """Take up to ``limit`` partitions that nobody holds or whose lease expired."""
        if limit <= 0:
            return []
        now = now_us()
        p = bus_partitions.c
        async with self._w.begin() as conn:
            q = (
                select(p.partition)
                .where(self._key, or_(p.owner.is_(None), p.lease_until_us < now))
                .order_by(p.partition)
                .limit(limit)
            )
            if self.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            free = list((await conn.execute(q)).scalars())
            if not free:
                return []
            rows = (
                await conn.execute(
                    update(bus_partitions)
                    .where(self._key, p.partition.in_(free))
                    .values(owner=member, epoch=p.epoch + 1, lease_until_us=now + lease_us, updated_us=now)
                    .returning(p.partition, p.epoch, p.position, p.inflight)
                )
            ).all()
        return sorted((Lease(r.partition, r.epoch, r.position, r.inflight) for r in rows), key=lambda x: x.partition)

    @db_errors
    async def mark_inflight(self, member: str, marks: Sequence[tuple[int, int, int]]) -> None:
        """Write (partition, epoch, position) in-flight marks, fenced like checkpoints.

        On PostgreSQL without waiting for the WAL flush: the mark guards against a worker
        process dying, and is visible to every other session once committed; a crash of
        the database itself could lose the last ones, and then that one crash of a
        handler goes uncounted."""
        if not marks:
            return
        p = bus_partitions.c
        stmt = (
            update(bus_partitions)
            .where(
                self._key,
                p.partition == bindparam("b_partition"),
                p.owner == member,
                p.epoch == bindparam("b_epoch"),
                p.inflight < bindparam("b_position"),
            )
            .values(inflight=bindparam("b_position"))
        )
        async with self._w.begin() as conn:
            if self.dialect == "postgresql":
                await conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            await conn.execute(
                stmt, [{"b_partition": a, "b_epoch": e, "b_position": pos} for a, e, pos in marks]
            )

    @db_errors
    async def commit(self, member: str, checkpoints: Sequence[tuple[int, ...]]) -> None:
        """Write (partition, epoch, position[, consumed]) checkpoints; fenced by owner and
        epoch, and never backwards. ``consumed`` (events handled since the last write)
        is added to the partition's counter in the same statement."""
        if not checkpoints:
            return
        p = bus_partitions.c
        stmt = (
            update(bus_partitions)
            .where(
                self._key,
                p.partition == bindparam("b_partition"),
                p.owner == member,
                p.epoch == bindparam("b_epoch"),
                p.position < bindparam("b_position"),
            )
            .values(position=bindparam("b_position"), updated_us=now_us(),
                    consumed=p.consumed + bindparam("b_consumed"))
        )
        async with self._w.begin() as conn:
            await conn.execute(
                stmt, [{"b_partition": c[0], "b_epoch": c[1], "b_position": c[2],
                        "b_consumed": c[3] if len(c) > 3 else 0} for c in checkpoints]
            )

    @db_errors
    async def release(self, member: str, partitions: Sequence[int]) -> None:
        if not partitions:
            return
        p = bus_partitions.c
        async with self._w.begin() as conn:
            await conn.execute(
                update(bus_partitions)
                .where(self._key, p.owner == member, p.partition.in_(list(partitions)))
                .values(owner=None, lease_until_us=0, inflight=0, updated_us=now_us())
            )

    @db_errors
    async def leave(self, member: str) -> None:
        p = bus_partitions.c
        async with self._w.begin() as conn:
            await conn.execute(
                update(bus_partitions).where(self._key, p.owner == member)
                .values(owner=None, lease_until_us=0, inflight=0)
            )
            await conn.execute(
                delete(bus_members).where(
                    bus_members.c.scope == self.scope, bus_members.c.group_name == self.group,
                    bus_members.c.member == member,
                )
            )

    @db_errors
    async def low_watermark(self) -> int:
        async with self._r.connect() as conn:
            return (await conn.execute(select(func.min(bus_partitions.c.position)).where(self._key))).scalar() or 0

    # ----------------------------------------------------------------- attempts

    @db_errors
    async def load_attempts(self, partition: int) -> dict[str, Attempt]:
        a = bus_attempts.c
        async with self._r.connect() as conn:
            rows = (
                await conn.execute(
                    select(bus_attempts).where(
                        a.scope == self.scope, a.group_name == self.group, a.partition == partition
                    )
                )
            ).all()
        return {
            r.event_id: Attempt(r.event_id, r.position, r.attempts, r.first_failure_us, r.last_failure_us,
                                r.reason, r.trace)
            for r in rows
        }

    @db_errors
    async def record_attempt(self, partition: int, member: str, att: Attempt) -> None:
        ins = insert_for(self.dialect)
        values = dict(
            scope=self.scope, group_name=self.group, event_id=att.event_id, partition=partition,
            position=att.position, attempts=att.attempts, first_failure_us=att.first_failure_us,
            last_failure_us=att.last_failure_us, reason=att.reason, trace=att.trace, member=member,
        )
        stmt = ins(bus_attempts).values(**values).on_conflict_do_update(
            index_elements=["scope", "group_name", "event_id"],
            set_={k: values[k] for k in ("attempts", "last_failure_us", "reason", "trace", "member")},
        )
        async with self._w.begin() as conn:
            await conn.execute(stmt)

    async def begin_attempt(self, partition: int, member: str, att: Attempt) -> None:
        """Record an attempt before its handler runs (``att.reason`` = CRASH_REASON...):
        if the process dies in the handler, the row stays and the next owner counts it;
        if the handler returns, clear_attempt or record_attempt replace it."""
        await self.record_attempt(partition, member, att)

    @db_errors
    async def clear_attempt(self, event_id: str) -> None:
        a = bus_attempts.c
        async with self._w.begin() as conn:
            await conn.execute(
                delete(bus_attempts).where(a.scope == self.scope, a.group_name == self.group, a.event_id == event_id)
            )


@db_errors
async def list_groups(store: Any, scope: str | None = None) -> list[dict[str, Any]]:
    """Every group (or those of one scope) with partitions, live members and checkpoints."""
    _, r = engines(store)
    now = now_us()
    g, p, m = bus_groups.c, bus_partitions.c, bus_members.c
    out = []
    async with r.connect() as conn:
        q = select(bus_groups).order_by(g.scope, g.group_name)
        if scope is not None:
            q = q.where(g.scope == scope)
        for grp in (await conn.execute(q)).all():
            key_p = and_(p.scope == grp.scope, p.group_name == grp.group_name)
            parts = (await conn.execute(select(bus_partitions).where(key_p).order_by(p.partition))).all()
            members = (
                await conn.execute(
                    select(bus_members)
                    .where(m.scope == grp.scope, m.group_name == grp.group_name, m.expires_us >= now)
                    .order_by(m.member)
                )
            ).all()
            low = min((x.position for x in parts), default=0)
            # Lag: events of the group's tenant scope past its lowest partition checkpoint
            # (an upper bound: events the filter would skip count too).
            lag_q = select(func.count()).select_from(events).where(events.c.position > low)
            if grp.scope != SCOPE_ALL:
                lag_q = lag_q.where(events.c.tenant == grp.scope)
            lag = (await conn.execute(lag_q)).scalar_one()
            head = (await conn.execute(select(log_head.c.position).where(log_head.c.id == 1))).scalar_one()
            out.append(
                {
                    "scope": grp.scope,
                    "group": grp.group_name,
                    "partitions": grp.partitions,
                    "low_watermark": low,
                    "head": head,
                    "lag": lag,
                    "high_watermark": max((x.position for x in parts), default=0),
                    "members": [
                        {
                            "member": x.member, "host": x.host, "pid": x.pid,
                            "heartbeat_us": x.heartbeat_us,
                            "partitions": [
                                y.partition for y in parts if y.owner == x.member and y.lease_until_us >= now
                            ],
                        }
                        for x in members
                    ],
                    "unowned": [y.partition for y in parts if y.owner is None or y.lease_until_us < now],
                }
            )
    return out


MIRROR_PREFIX = "bus/"  # a group's low watermark, mirrored in the store's ``checkpoints`` table


async def refresh_mirrors(conn: Any) -> list[dict[str, Any]]:
    """Bring every ``bus/<group>`` mirrored checkpoint to its group's real low watermark
    (the lowest partition checkpoint), inside the caller's transaction; return the
    mirrors no group owns any more (deleted or renamed groups), which are left as they
    are: whether the log above them may go is the operator's call, so they are reported
    (prune, ``syncline bus groups``) instead of dropped.

    Members mirror the watermark only now and then (bus/member.py), so without this a
    group that had consumed far past its last mirror still held prune back at the mirror."""
    c, g, p = checkpoints.c, bus_groups.c, bus_partitions.c
    rows = (await conn.execute(
        select(c.name, c.tenant, c.position).where(c.name.like(MIRROR_PREFIX + "%")))).all()
    unowned = []
    for name, scope, position in rows:
        group = name[len(MIRROR_PREFIX):]
        exists = (await conn.execute(
            select(g.partitions).where(g.scope == scope, g.group_name == group))).first()
        if exists is None:
            unowned.append({"name": name, "tenant": scope, "position": position})
            continue
        low = (await conn.execute(
            select(func.min(p.position)).where(p.scope == scope, p.group_name == group))).scalar()
        if low is not None and low != position:
            await conn.execute(update(checkpoints).where(c.name == name, c.tenant == scope)
                               .values(position=low, updated_us=now_us()))
    return unowned


@db_errors
async def unowned_mirrors(store: Any) -> list[dict[str, Any]]:
    """``bus/<group>`` checkpoints whose group no longer exists (see refresh_mirrors)."""
    _, r = engines(store)
    c, g = checkpoints.c, bus_groups.c
    owned = select(g.group_name).where(g.scope == c.tenant, (MIRROR_PREFIX + g.group_name) == c.name).exists()
    async with r.connect() as conn:
        rows = (await conn.execute(
            select(c.name, c.tenant, c.position).where(c.name.like(MIRROR_PREFIX + "%"), ~owned)
            .order_by(c.tenant, c.name))).all()
    return [{"name": n, "tenant": t, "position": pos} for n, t, pos in rows]


@db_errors
async def bus_figures(store: Any, max_groups: int = 1000) -> dict[str, Any]:
    """The figures of every group in a handful of aggregate queries (for /metrics and
    ``syncline bus groups``; api/metrics_bus.py): the log head, and per (scope, group)
    its lowest partition checkpoint, events consumed (the sum of its partitions'
    counters) and dead letters by status. At most ``max_groups`` groups (the rest are
    counted in ``groups_left_out``), so a scrape costs the same however many there are."""
    from ..bus_schema import bus_dead_letters

    _, r = engines(store)
    g, p, d = bus_groups.c, bus_partitions.c, bus_dead_letters.c
    async with r.connect() as conn:
        head = (await conn.execute(select(log_head.c.position).where(log_head.c.id == 1))).scalar() or 0
        names = (await conn.execute(
            select(g.scope, g.group_name).order_by(g.scope, g.group_name).limit(max_groups + 1))).all()
        total = len(names)
        if total > max_groups:
            total = (await conn.execute(select(func.count()).select_from(bus_groups))).scalar_one()
            names = names[:max_groups]
        wanted = {(s, n) for s, n in names}
        parts = (await conn.execute(
            select(p.scope, p.group_name, func.min(p.position), func.sum(p.consumed))
            .group_by(p.scope, p.group_name))).all()
        dlq = (await conn.execute(
            select(d.scope, d.group_name, d.status, func.count()).group_by(d.scope, d.group_name, d.status))).all()
    groups: dict[tuple[str, str], dict[str, Any]] = {
        k: {"scope": k[0], "group": k[1], "low_watermark": 0, "consumed": 0, "lag": 0, "dead_letters": {}}
        for k in names
    }
    for scope, name, low, consumed in parts:
        x = groups.get((scope, name))
        if x is not None:
            x["low_watermark"] = low or 0
            x["consumed"] = int(consumed or 0)
            x["lag"] = max(0, head - (low or 0))
    for scope, name, status, n in dlq:
        if (scope, name) in wanted:
            groups[(scope, name)]["dead_letters"][status] = n
    return {"head": head, "groups": list(groups.values()), "groups_left_out": total - len(names)}
