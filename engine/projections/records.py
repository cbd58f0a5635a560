"""Records as a projection: each tenant's ``RecordsState``, folded from ``record.patched``."""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

from ..events import RecordedEvent
from ..filters import EventFilter
from ..records import RECORD_PATCHED, MergeRegistry, RecordsState
from ..records.fold import RecordsFolder
from . import Projection


class RecordsByTenant(Mapping[str, RecordsState]):
    """Tenant -> ``RecordsState``, read like a dict.

    Each tenant has a ``RecordsFolder`` that keeps the working copies of the records
    the pages touch, so a tenant's ``RecordsState`` is built when it is read, not once
    per page folded (a rebuild reads it once, at the end)."""

    __slots__ = ("_folders", "_registry")

    def __init__(self, registry: MergeRegistry | None = None) -> None:
        self._folders: dict[str, RecordsFolder] = {}
        self._registry = registry

    def __getitem__(self, tenant: str) -> RecordsState:
        return self._folders[tenant].state()

    def __iter__(self) -> Iterator[str]:
        return iter(self._folders)

    def __len__(self) -> int:
        return len(self._folders)

    def __repr__(self) -> str:
        return f"RecordsByTenant({dict(self.items())!r})"

    def fold(self, events: Sequence[RecordedEvent]) -> None:
        # A tenant's events come in runs (an append is consecutive in the log): its
        # list is looked up once per run, not once per event.
        by_tenant: dict[str, list[RecordedEvent]] = {}
        get = by_tenant.get
        tenant = None
        append: Callable[[RecordedEvent], None]  # bound at the first event (a tenant is a str)
        for e in events:
            if e.tenant != tenant:
                tenant = e.tenant
                evs = get(tenant)
                if evs is None:
                    evs = by_tenant[tenant] = []
                append = evs.append
            append(e)
        folders = self._folders
        for tenant, evs in by_tenant.items():
            folder = folders.get(tenant)
            if folder is None:
                folder = folders[tenant] = RecordsFolder(RecordsState(), self._registry)
            folder.fold(evs)


def records_projection(registry: MergeRegistry | None = None) -> Projection[RecordsByTenant]:
    def apply_many(state: RecordsByTenant, events: Sequence[RecordedEvent]) -> RecordsByTenant:
        state.fold(events)
        return state

    return Projection(
        "records",
        lambda: RecordsByTenant(registry),
        lambda state, e: apply_many(state, (e,)),
        EventFilter(stream_prefixes=("rec/",), types=(RECORD_PATCHED,)),
        apply_many,
    )
