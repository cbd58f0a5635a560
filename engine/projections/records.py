"""Records as a projection: one ``RecordsState`` per tenant, folded from ``record.patched``."""
from __future__ import annotations

from typing import Sequence

from ..events import RecordedEvent
from ..filters import EventFilter
from ..records import RECORD_PATCHED, MergeRegistry, RecordsState, fold_record_events
from . import Projection

RecordsByTenant = dict[str, RecordsState]


def records_projection(registry: MergeRegistry | None = None) -> Projection[RecordsByTenant]:
    def apply_many(state: RecordsByTenant, events: Sequence[RecordedEvent]) -> RecordsByTenant:
        by_tenant: dict[str, list[RecordedEvent]] = {}
        get = by_tenant.get
        for e in events:
            evs = get(e.tenant)
            if evs is None:  # (not setdefault: that builds an empty list per event)
                by_tenant[e.tenant] = [e]
            else:
                evs.append(e)
        for tenant, evs in by_tenant.items():
            state[tenant] = fold_record_events(state.get(tenant, RecordsState()), evs, registry)
        return state

    return Projection(
        "records",
        dict,
        lambda state, e: apply_many(state, (e,)),
        EventFilter(stream_prefixes=("rec/",), types=(RECORD_PATCHED,)),
        apply_many,
    )
