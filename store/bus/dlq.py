"""Dead-letter storage: one row per (group, event), with the original envelope, the
failure, and a status that the DLQ API (bus/dlq.py) moves along:

    dead --requeue--> requeued --claimed by the partition owner--> redelivering
    redelivering --handled--> resolved        redelivering --fails again--> dead
    dead | requeued --discard--> discarded

A requeued entry is delivered from this table, never by moving a checkpoint, so
requeueing cannot move a group's position backwards or forwards.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import and_, or_, select, update

from syncline.engine.codec import pack, unpack
from syncline.engine.errors import NotFound, ValidationError

from ..bus_schema import bus_attempts, bus_dead_letters
from ..errors import db_errors
from ._db import engines, now_us

STATUSES = ("dead", "requeued", "redelivering", "resolved", "discarded")
MIN_PREFIX = 4  # characters of an abbreviated dead-letter id (DeadLetterStore.resolve)
MAX_CANDIDATES = 10  # ids listed when a prefix is ambiguous


class AmbiguousId(ValidationError):
    """An abbreviated id that more than one dead letter starts with."""

    code = "ambiguous_id"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    scope: str
    group: str
    partition: int
    event_tenant: str
    event_id: str
    stream: str
    type: str
    position: int
    version: int
    event: dict[str, Any]  # the original envelope, as RecordedEvent.to_wire() gave it
    edited_data: Any
    edited: bool
    reason: str
    trace: str
    attempts: int
    first_failure_us: int
    last_failure_us: int
    member: str
    status: str
    status_reason: str | None
    dead_count: int
    created_us: int
    updated_us: int

    @property
    def data(self) -> Any:
        """The payload a redelivery carries: the edited one if any, else the original."""
        return self.edited_data if self.edited else self.event.get("data")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _entry(r: Any) -> DeadLetter:
    return DeadLetter(
        id=r.id, scope=r.scope, group=r.group_name, partition=r.partition, event_tenant=r.event_tenant,
        event_id=r.event_id, stream=r.stream, type=r.type, position=r.position, version=r.version,
        event=unpack(r.event), edited_data=unpack(r.edited_data) if r.edited_data is not None else None,
        edited=r.edited_data is not None, reason=r.reason, trace=r.trace, attempts=r.attempts,
        first_failure_us=r.first_failure_us, last_failure_us=r.last_failure_us, member=r.member,
        status=r.status, status_reason=r.status_reason, dead_count=r.dead_count, created_us=r.created_us,
        updated_us=r.updated_us,
    )


class DeadLetterStore:
    def __init__(self, store: Any) -> None:
        self._w, self._r = engines(store)
        self.dialect = self._w.dialect.name

    @db_errors
    async def put(
        self, *, scope: str, group: str, partition: int, event: dict[str, Any], reason: str, trace: str,
        attempts: int, first_failure_us: int, last_failure_us: int, member: str,
    ) -> DeadLetter:
        """Dead-letter an event (or an entry's redelivery that failed again) and forget its
        attempts, in one transaction."""
        now = now_us()
        d = bus_dead_letters.c
        async with self._w.begin() as conn:
            existing = (
                await conn.execute(
                    select(d.id, d.dead_count, d.attempts, d.first_failure_us).where(
                        d.scope == scope, d.group_name == group, d.event_id == event["id"]
                    )
                )
            ).first()
            if existing is None:
                entry_id = str(uuid.uuid4())
                await conn.execute(
                    bus_dead_letters.insert().values(
                        id=entry_id, scope=scope, group_name=group, partition=partition,
                        event_tenant=event["tenant"], event_id=event["id"], stream=event["stream"],
                        type=event["type"], position=event["position"], version=event["version"],
                        event=pack(event), edited_data=None, reason=reason[:10_000], trace=trace[:100_000],
                        attempts=attempts, first_failure_us=first_failure_us, last_failure_us=last_failure_us,
                        member=member, status="dead", status_reason=None, dead_count=1, claimed_by=None,
                        claimed_until_us=0, created_us=now, updated_us=now,
                    )
                )
            else:
                entry_id = existing.id
                await conn.execute(
                    update(bus_dead_letters)
                    .where(d.id == entry_id)
                    .values(
                        reason=reason[:10_000], trace=trace[:100_000], attempts=existing.attempts + attempts,
                        last_failure_us=last_failure_us, member=member, status="dead", status_reason=None,
                        dead_count=existing.dead_count + 1, claimed_by=None, claimed_until_us=0, updated_us=now,
                    )
                )
            a = bus_attempts.c
            await conn.execute(
                bus_attempts.delete().where(a.scope == scope, a.group_name == group, a.event_id == event["id"])
            )
            row = (await conn.execute(select(bus_dead_letters).where(d.id == entry_id))).one()
        return _entry(row)

    @db_errors
    async def get(self, entry_id: str, *, scope: str | None = None) -> DeadLetter:
        d = bus_dead_letters.c
        q = select(bus_dead_letters).where(d.id == entry_id)
        if scope is not None:
            q = q.where(d.scope == scope)
        async with self._r.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            raise NotFound(f"no dead letter {entry_id!r}", id=entry_id)
        return _entry(row)

    @db_errors
    async def resolve(self, id_or_prefix: str, *, scope: str | None = None) -> str:
        """The full id of the one entry whose id is ``id_or_prefix`` or starts with it, as
        git resolves abbreviated commits: at least MIN_PREFIX characters; no match is
        ``not_found``, several are ``ambiguous_id`` with the candidates listed."""
        d = bus_dead_letters.c
        text = (id_or_prefix or "").strip().lower()
        if len(text) < MIN_PREFIX:
            raise ValidationError(f"a dead-letter id or prefix has at least {MIN_PREFIX} characters",
                                  id=text[:80])
        q = select(d.id).where(or_(d.id == text, d.id.startswith(text, autoescape=True)))
        if scope is not None:
            q = q.where(d.scope == scope)
        async with self._r.connect() as conn:
            found = list((await conn.execute(q.order_by(d.id).limit(MAX_CANDIDATES + 1))).scalars())
        if text in found:
            return text
        if not found:
            raise NotFound(f"no dead letter {text[:80]!r}", id=text[:80])
        if len(found) > 1:
            shown = found[:MAX_CANDIDATES]
            more = " and more" if len(found) > MAX_CANDIDATES else ""
            raise AmbiguousId(f"dead-letter id prefix {text!r} matches {', '.join(shown)}{more}",
                              id=text, candidates=shown)
        return found[0]

    @db_errors
    async def query(
        self, *, scope: str | None = None, group: str | None = None, status: str | Sequence[str] | None = "dead",
        stream_prefix: str | None = None, type: str | None = None, event_id: str | None = None,
        event_tenant: str | None = None, failed_after_us: int | None = None, failed_before_us: int | None = None,
        reason_contains: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[DeadLetter]:
        """Entries matching every given criterion, oldest first. ``scope=None`` reads all
        scopes (an admin view); a tenant's view passes its tenant."""
        d = bus_dead_letters.c
        conds = []
        if scope is not None:
            conds.append(d.scope == scope)
        if group is not None:
            conds.append(d.group_name == group)
        if status == "all" or (not isinstance(status, str) and status is not None and "all" in status):
            status = None  # what the CLI's --status all means
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            bad = set(statuses) - set(STATUSES)
            if bad:
                raise ValidationError(f"unknown dead-letter status {sorted(bad)}")
            conds.append(d.status.in_(statuses))
        if stream_prefix:
            conds.append(d.stream.startswith(stream_prefix, autoescape=True))
        if type:
            conds.append(d.type == type)
        if event_id:
            conds.append(d.event_id == event_id)
        if event_tenant:
            conds.append(d.event_tenant == event_tenant)
        if failed_after_us is not None:
            conds.append(d.last_failure_us >= failed_after_us)
        if failed_before_us is not None:
            conds.append(d.last_failure_us < failed_before_us)
        if reason_contains:
            conds.append(d.reason.contains(reason_contains, autoescape=True))
        q = (
            select(bus_dead_letters)
            .where(*conds)
            .order_by(d.created_us, d.id)
            .limit(max(1, min(limit, 10_000)))
            .offset(max(0, offset))
        )
        async with self._r.connect() as conn:
            return [_entry(r) for r in (await conn.execute(q)).all()]

    @db_errors
    async def transition(
        self, entry_id: str, *, to: str, allowed_from: Sequence[str], reason: str | None = None,
        edited_data: Any = ..., scope: str | None = None,
    ) -> DeadLetter:
        """Move an entry to status ``to`` if it is in one of ``allowed_from``; optionally
        replace its payload. Raises NotFound / ValidationError otherwise."""
        d = bus_dead_letters.c
        values: dict[str, Any] = {"status": to, "updated_us": now_us(), "claimed_by": None, "claimed_until_us": 0}
        if reason is not None:
            values["status_reason"] = reason
        if edited_data is not ...:
            values["edited_data"] = pack(edited_data)
        where = [d.id == entry_id, d.status.in_(list(allowed_from))]
        if scope is not None:
            where.append(d.scope == scope)
        async with self._w.begin() as conn:
            res = await conn.execute(update(bus_dead_letters).where(*where).values(**values))
            row = (await conn.execute(select(bus_dead_letters).where(d.id == entry_id))).first()
        if row is None or (scope is not None and row.scope != scope):
            raise NotFound(f"no dead letter {entry_id!r}", id=entry_id)
        if res.rowcount != 1:
            raise ValidationError(
                f"dead letter {entry_id} is {row.status!r}; this action needs one of {list(allowed_from)}",
                status=row.status,
            )
        return _entry(row)

    @db_errors
    async def claim_requeued(
        self, *, scope: str, group: str, partitions: Sequence[int], member: str, claim_us: int, limit: int = 100
    ) -> list[DeadLetter]:
        """Requeued entries of the given partitions (and redeliveries whose claimant died),
        claimed for ``member`` until ``now + claim_us``."""
        if not partitions:
            return []
        now = now_us()
        d = bus_dead_letters.c
        mine = and_(d.scope == scope, d.group_name == group, d.partition.in_(list(partitions)))
        ready = or_(d.status == "requeued", and_(d.status == "redelivering", d.claimed_until_us < now))
        async with self._w.begin() as conn:
            q = select(d.id).where(mine, ready).order_by(d.position).limit(limit)
            if self.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            ids = list((await conn.execute(q)).scalars())
            if not ids:
                return []
            await conn.execute(
                update(bus_dead_letters)
                .where(d.id.in_(ids))
                .values(status="redelivering", claimed_by=member, claimed_until_us=now + claim_us, updated_us=now)
            )
            rows = (await conn.execute(select(bus_dead_letters).where(d.id.in_(ids)).order_by(d.position))).all()
        return [_entry(r) for r in rows]
