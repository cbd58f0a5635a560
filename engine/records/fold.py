"""Rebuilding record state from the log: a fold over ``record.patched`` events.

Folding, in log order, the events ``reconcile`` emitted gives exactly the state
``reconcile`` returned (receipts included: each event carries its op's outcome).
Events of other types are ignored. Merge fields need the merge functions, so pass
the registry the reconciler used when it has functions beyond the built-ins.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Iterable

from ..clocks import ClockMerger
from ..events import RecordedEvent
from .kernel import apply_changes
from .merges import MergeRegistry
from .payloads import RECORD_PATCHED, decode_patch
from .state import RecordsState, RecordState

_BUILTINS = MergeRegistry.with_builtins()


def apply_record_event(
    state: RecordsState, event: RecordedEvent, registry: MergeRegistry | None = None
) -> RecordsState:
    """One step of the fold. Copies the touched record; use ``fold_record_events`` for batches."""
    return fold_record_events(state, (event,), registry)


def fold_record_events(
    state: RecordsState, events: Iterable[RecordedEvent], registry: MergeRegistry | None = None
) -> RecordsState:
    reg = registry if registry is not None else _BUILTINS
    # stream -> (fields, record clock, receipts): mutable working copies, frozen at the end
    work: dict[str, tuple[dict, ClockMerger, dict]] = {}
    get_work = work.get
    for ev in events:
        if ev.type != RECORD_PATCHED:
            continue
        stream = ev.stream
        w = get_work(stream)
        if w is None:
            rec = state.get(stream)
            w = work[stream] = (dict(rec.fields), ClockMerger(rec.clock), dict(rec.receipts))
        fields, clock, receipts = w
        stamp, changes, outcome = decode_patch(stream, ev.data, reg)
        op_id = stamp[0]
        if op_id in receipts:
            continue  # an op is in the log once; tolerate a replayed copy all the same
        apply_changes(fields, stream, stamp, changes, reg)
        clock.add(stamp[4])
        receipts[op_id] = outcome
    if not work:
        return state
    records = dict(state.records)
    for stream, (fields, clock, receipts) in work.items():
        records[stream] = RecordState(
            stream, MappingProxyType(fields), clock.result(), MappingProxyType(receipts)
        )
    return RecordsState(MappingProxyType(records))
