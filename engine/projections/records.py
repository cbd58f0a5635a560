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
        # A tenant's events come in runs (an append is consecutive in the log): its
        # list is looked up once per run, not once per event.
        by_tenant: dict[str, list[RecordedEvent]] = {}
        get = by_tenant.get
        tenant = None
        append = None
        for e in events:
            if e.tenant != tenant:
                tenant = e.tenant
                evs = get(tenant)
                if evs is None:
                    evs = by_tenant[tenant] = []
                append = evs.append
            append(e)
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
