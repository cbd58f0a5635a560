"""The dead-letter queue API: query, edit, requeue, discard. Every action is also an event
on the system stream ``$dlq/<group>`` of the event's tenant, so the audit trail is the log.

Requeue only marks the entry; the member that owns the entry's partition claims it
and delivers it again with the original event id (and the edited payload). The
group's checkpoints are never touched, so a requeue cannot skip or replay the log.
"""
from __future__ import annotations

import hashlib
from typing import Any

from syncline.engine.errors import ValidationError
from syncline.engine.events import Actor, NewEvent, RecordedEvent
from syncline.store.bus import DeadLetter, DeadLetterStore
from syncline.store.bus.groups import Attempt

from .events import event_to_doc

SYSTEM_ACTOR_USER = "syncline-bus"


def dlq_stream(group: str) -> str:
    return f"$dlq/{group}"


class DeadLetterQueue:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.entries = DeadLetterStore(store)

    # ------------------------------------------------------------ for the runtime

    async def dead_letter(
        self, *, scope: str, group: str, partition: int, event: RecordedEvent, attempt: Attempt, member: str
    ) -> DeadLetter:
        entry = await self.entries.put(
            scope=scope, group=group, partition=partition, event=event_to_doc(event), reason=attempt.reason,
            trace=attempt.trace, attempts=attempt.attempts, first_failure_us=attempt.first_failure_us,
            last_failure_us=attempt.last_failure_us, member=member,
        )
        await self._record(entry, "dead_lettered", f"dead/{entry.dead_count}", {
            "reason": attempt.reason, "attempts": attempt.attempts, "member": member,
        })
        return entry

    async def resolved(self, entry: DeadLetter, member: str) -> DeadLetter:
        entry = await self.entries.transition(entry.id, to="resolved", allowed_from=("redelivering",))
        await self._record(entry, "resolved", f"resolved/{entry.dead_count}", {"member": member})
        return entry

    # --------------------------------------------------------------- for people

    async def query(self, **criteria: Any) -> list[DeadLetter]:
        """See store.bus.DeadLetterStore.query: scope, group, status (one, several, or
        "all"), stream_prefix, type,
        event_id, event_tenant, failed_after_us, failed_before_us, reason_contains, limit, offset."""
        return await self.entries.query(**criteria)

    async def get(self, entry_id: str, *, scope: str | None = None) -> DeadLetter:
        return await self.entries.get(entry_id, scope=scope)

    async def resolve(self, id_or_prefix: str, *, scope: str | None = None) -> str:
        """The full id an abbreviated one (at least 4 characters) names, as git does;
        ``not_found`` or ``ambiguous_id`` (with the candidates) otherwise."""
        return await self.entries.resolve(id_or_prefix, scope=scope)

    async def edit(self, entry_id: str, data: Any, *, by: str = "", scope: str | None = None) -> DeadLetter:
        """Replace the payload a requeue will deliver (the original stays in ``event``)."""
        before = await self.entries.get(entry_id, scope=scope)
        entry = await self.entries.transition(
            entry_id, to=before.status, allowed_from=("dead",), edited_data=data, scope=scope
        )
        await self._record(entry, "edited", None, {"by": by, "data": data})
        return entry

    async def requeue(self, entry_id: str, *, by: str = "", scope: str | None = None) -> DeadLetter:
        entry = await self.entries.transition(entry_id, to="requeued", allowed_from=("dead",), scope=scope)
        await self._record(entry, "requeued", f"requeued/{entry.dead_count}", {"by": by, "edited": entry.edited})
        return entry

    async def discard(self, entry_id: str, reason: str, *, by: str = "", scope: str | None = None) -> DeadLetter:
        if not reason:
            raise ValidationError("discarding a dead letter needs a reason")
        entry = await self.entries.transition(
            entry_id, to="discarded", allowed_from=("dead", "requeued"), reason=reason, scope=scope
        )
        await self._record(entry, "discarded", "discarded", {"by": by, "reason": reason})
        return entry

    # ----------------------------------------------------------------- internal

    async def _record(self, entry: DeadLetter, action: str, once: str | None, extra: dict[str, Any]) -> None:
        data = {
            "entry_id": entry.id, "group": entry.group, "scope": entry.scope, "event_id": entry.event_id,
            "stream": entry.stream, "type": entry.type, "position": entry.position, "status": entry.status,
            **extra,
        }
        # Actions that may be retried after a crash (dead-lettering, requeue) carry an
        # idempotency key, so a retry does not record them twice.
        key = None
        if once is not None:
            key = "dlq:" + hashlib.sha256(f"{entry.id}/{once}".encode()).hexdigest()[:40]
        await self.store.append(
            entry.event_tenant, dlq_stream(entry.group),
            [NewEvent(f"dlq.{action}", data, actor=Actor(user=SYSTEM_ACTOR_USER))],
            idempotency_key=key,
        )
