"""Rebuilding record state from the log: a fold over ``record.patched`` events.

Folding, in log order, the events ``reconcile`` emitted gives exactly the state
``reconcile`` returned (receipts included: each event carries its op's outcome).
Events of other types are ignored. Merge fields need the merge functions, so pass
the registry the reconciler used when it has functions beyond the built-ins.
"""
from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from types import MappingProxyType
from typing import Any, Iterable, Iterator

from ..clocks import EMPTY_CLOCK, ClockMerger
from ..events import RecordedEvent
from .kernel import apply_changes
from .merges import MergeRegistry
from .outcomes import Outcome, OutcomeKind
from .payloads import RECORD_PATCHED, decode_patch_body, decode_patch_cached
from .state import RecordsState, RecordState, copy_mapping

_BUILTINS = MergeRegistry.with_builtins()


class Receipts(Mapping):
    """Read-only receipts (op id -> outcome) that folds extend without copying.

    Receipts only grow, in log order. A fold's states share one dict, ``op id -> entry``;
    each state sees its first ``n`` entries. A fold extending the newest state of that
    line (nothing was appended past its ``n``) appends in place; from any older state it
    copies first. So every state keeps reading exactly the receipts it had (copy on
    write), and a batch costs its own ops, not the record's whole history.

    An entry is ``(index, kind name, conflicts, resolved, superseded)``: strings and
    tuples of strings only, which the garbage collector stops tracking after its first
    look (an ``Outcome`` holds an ``OutcomeKind``, which it tracks forever). A rebuild
    keeps one receipt per op ever accepted, and rescanning them all in every full
    collection cost more than the fold itself. The ``Outcome`` is built when asked for,
    equal to the one the event carried. An outcome that does not fit that form (none
    does today) is kept as ``(index, outcome)``."""

    __slots__ = ("_d", "_n", "_stream")

    def __init__(self, d: dict[str, tuple], n: int, stream: str = "") -> None:
        self._d = d
        self._n = n
        self._stream = stream

    def _outcome(self, op_id: str, e: tuple) -> Outcome:
        if len(e) == 2:
            return e[1]
        return _tuple_new(Outcome, (_KIND_BY_NAME[e[1]], op_id, self._stream, e[2], e[3], e[4], None, "", None))

    def __getitem__(self, op_id: str) -> Outcome:
        e = self._d[op_id]
        if e[0] < self._n:
            return self._outcome(op_id, e)
        raise KeyError(op_id)

    def get(self, op_id: str, default: Any = None) -> Any:
        e = self._d.get(op_id)
        return self._outcome(op_id, e) if e is not None and e[0] < self._n else default

    def __contains__(self, op_id: object) -> bool:
        e = self._d.get(op_id)  # type: ignore[call-overload]
        return e is not None and e[0] < self._n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        # A snapshot of the keys: a later fold may append to the shared dict meanwhile.
        return iter(list(islice(self._d, self._n)))

    def __repr__(self) -> str:
        return f"Receipts({dict(self.items())!r})"

    def _tip(self) -> dict[str, tuple]:
        """A dict a fold may append to: the shared one if this view is its newest, else a copy."""
        d = self._d
        if len(d) == self._n:
            return d
        return {k: d[k] for k in islice(d, self._n)}


_tuple_new = tuple.__new__
_KIND_BY_NAME = {k.value: k for k in OutcomeKind}
_KIND_NAME = {k: k.value for k in OutcomeKind}
_KIND_VALUE = {k.value: k.value for k in OutcomeKind}  # the shared name strings


def _entry(index: int, o: Outcome, stream: str) -> tuple:
    if o[6] is None and not o[7] and o[8] is None and o[2] == stream and type(o[0]) is OutcomeKind:
        return (index, _KIND_NAME[o[0]], o[3], o[4], o[5])
    return (index, o)


def _extendable(receipts: Mapping[str, Any], stream: str) -> dict[str, tuple]:
    if type(receipts) is Receipts and receipts._stream == stream:
        return receipts._tip()
    return {op_id: _entry(i, o, stream) for i, (op_id, o) in enumerate(receipts.items())}


def apply_record_event(
    state: RecordsState, event: RecordedEvent, registry: MergeRegistry | None = None
) -> RecordsState:
    """One step of the fold. Copies the touched record; use ``fold_record_events`` for batches."""
    return fold_record_events(state, (event,), registry)


def fold_record_events(
    state: RecordsState, events: Iterable[RecordedEvent], registry: MergeRegistry | None = None,
    *, shared_decode: bool = False,
) -> RecordsState:
    """``shared_decode``: decode patches through the bounded (tenant, position) cache
    (``payloads.decode_patch_cached``), for processes folding the same events into many
    replicas; the result is the same either way."""
    reg = registry if registry is not None else _BUILTINS
    # stream -> (fields, record clock, receipts): mutable working copies, frozen at the end
    work: dict[str, tuple[dict, ClockMerger, dict]] = {}
    get_work = work.get
    get_record = state.records.get
    for ev in events:
        if ev.type != RECORD_PATCHED:
            continue
        stream = ev.stream
        w = get_work(stream)
        if w is None:
            rec = get_record(stream)
            if rec is None:
                w = work[stream] = ({}, ClockMerger(EMPTY_CLOCK), {})
            else:
                w = work[stream] = (copy_mapping(rec[1]), ClockMerger(rec[2]), _extendable(rec[3], stream))
        fields, clock, receipts = w
        if shared_decode:
            stamp, changes, outcome = decode_patch_cached(ev.tenant, ev.position, stream, ev.data, reg)
            kname, conflicts, resolved, superseded = _KIND_NAME[outcome[0]], outcome[3], outcome[4], outcome[5]
        else:
            # The outcome's parts straight from its body: what ``decode_patch`` would put
            # in an Outcome, which the receipt does not keep (see Receipts).
            stamp, changes, o = decode_patch_body(ev.data, reg)
            kname = _KIND_VALUE.get(o["kind"])
            if kname is None:
                OutcomeKind(o["kind"])  # raises ValueError, as decode_patch does
            if len(o) == 1:
                conflicts = resolved = superseded = ()
            else:
                conflicts = tuple(o.get("conflicts", ()))
                resolved = tuple(o.get("resolved", ()))
                superseded = tuple(o.get("superseded", ()))
        op_id = stamp[0]
        if op_id in receipts:
            continue  # an op is in the log once; tolerate a replayed copy all the same
        # The record clock first: whether the op's clock covers it (then it covers
        # every field's clock) spares apply_changes a comparison per field.
        apply_changes(fields, stream, stamp, changes, reg, clock.add(stamp[4]))
        receipts[op_id] = (len(receipts), kname, conflicts, resolved, superseded)
    if not work:
        return state
    records = copy_mapping(state.records)
    for stream, (fields, clock, receipts) in work.items():
        records[stream] = _tuple_new(
            RecordState, (stream, MappingProxyType(fields), clock.result(), Receipts(receipts, len(receipts), stream))
        )
    return RecordsState(MappingProxyType(records))
