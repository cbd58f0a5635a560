"""What every event store adapter shares: the single-stream append, scope checks, the
chain check used by ``verify``, and the default clock. Adapters import this module,
never each other."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Sequence

from syncline.engine.errors import ValidationError
from syncline.engine.events import AppendResult, NewEvent, StreamWrite, check_tenant
from syncline.engine.filters import EventFilter
from syncline.engine.ports import ChainBreak, LogPage

from .instruments import Instrumented
from .rows import row_hash
from .tail import tail_log


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class StoreBase(Instrumented):
    """``append`` in terms of the adapter's ``append_many``; ``tail`` over its ``read_log``;
    the latency and trace hooks of store/instruments.py."""

    async def append(
        self,
        tenant: str,
        stream: str,
        events_: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        return await self.append_many(
            tenant, [StreamWrite(stream, tuple(events_), expected_version)], idempotency_key=idempotency_key
        )


    def tail(
        self,
        tenant: str | None,
        *,
        after: int = 0,
        filter: EventFilter | None = None,
        all_tenants: bool = False,
        batch: int = 500,
    ) -> AsyncIterator[LogPage]:
        check_scope(tenant, all_tenants)
        return tail_log(self, tenant, after=after, filter=filter, all_tenants=all_tenants, batch=batch)

def check_chain(head: Any, rows: Sequence[Any]) -> list[ChainBreak]:
    """Compare a stream's stored rows (in version order) with its head and anchor."""
    t, s = head["tenant"], head["stream"]
    out: list[ChainBreak] = []
    expect_version = head["anchor_version"] + 1
    prev_hash = head["anchor_hash"]
    prev_position = 0
    for r in rows:
        if r["version"] != expect_version:
            out.append(ChainBreak(t, s, expect_version, r["position"], "missing_event"))
        elif r["prev_hash"] != prev_hash:
            out.append(ChainBreak(t, s, r["version"], r["position"], "broken_link"))
        if row_hash(r) != r["hash"]:
            out.append(ChainBreak(t, s, r["version"], r["position"], "hash_mismatch"))
        if r["position"] <= prev_position:
            out.append(ChainBreak(t, s, r["version"], r["position"], "out_of_order"))
        prev_position = r["position"]
        prev_hash = r["hash"]
        expect_version = r["version"] + 1
    if expect_version - 1 != head["version"] or prev_hash != head["head_hash"]:
        out.append(ChainBreak(t, s, head["version"], prev_position, "head_mismatch"))
    return out


def check_scope(tenant: str | None, all_tenants: bool) -> None:
    if tenant is None and not all_tenants:
        raise ValidationError("a read across all tenants must say all_tenants=True")
    if tenant is not None:
        if all_tenants:
            raise ValidationError("pass either a tenant or all_tenants=True, not both")
        check_tenant(tenant)
