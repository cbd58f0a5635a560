"""Rebuilding record state from the log: a fold over ``record.patched`` events.

Folding, in log order, the events ``reconcile`` emitted gives exactly the state
``reconcile`` returned (receipts included: each event carries its op's outcome).
Events of other types are ignored. Merge fields need the merge functions, so pass
the registry the reconciler used when it has functions beyond the built-ins.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Iterable

from ..clocks import _HLC_TEXT, COUNTER_MAX, HLCTimestamp, VectorClock, _new_object, _set_c, _set_hash, _set_sorted
from ..events import RecordedEvent
from .config import Strategy
from .fold_work import _new_work, _tuple_new, _Work
from .kernel import apply_changes
from .merges import NO_INITIAL, MergeRegistry
from .outcomes import OutcomeKind
from .payloads import RECORD_PATCHED, decode_patch_body, decode_patch_cached
from .receipts import _KIND_CODE, _KIND_NAME, _KIND_VALUE, _receipt
from .state import LwwField, MergeField, RecordsState, Stamp, copy_mapping

_BUILTINS = MergeRegistry.with_builtins()


def apply_record_event(
    state: RecordsState, event: RecordedEvent, registry: MergeRegistry | None = None
) -> RecordsState:
    """One step of the fold. Copies the touched record; use ``fold_record_events`` for batches."""
    return fold_record_events(state, (event,), registry)


def fold_record_events(
    state: RecordsState, events: Iterable[RecordedEvent], registry: MergeRegistry | None = None,
    *, shared_decode: bool = False,
) -> RecordsState:
    """``state`` with ``events`` folded in: one ``RecordsFolder.fold``, then its state.

    ``shared_decode``: decode patches through the bounded (tenant, position) cache
    (``payloads.decode_patch_cached``), for processes folding the same events into many
    replicas; the result is the same either way."""
    folder = RecordsFolder(state, registry)
    folder.fold(events, shared_decode=shared_decode)
    return folder.state()


class RecordsFolder:
    """Folds batches of events into one set of records, keeping each touched record's
    working copy (``_Work``) from one batch to the next; ``state()`` builds the
    ``RecordsState`` from them when someone asks for it.

    A projection folding the log page by page would otherwise turn every record a page
    touches into a new immutable ``RecordState`` per page, and copy the map of records,
    only to copy them all again on the next page: on a rebuild that was about 40% of the
    records fold, and the garbage collector scanned each page's copies before they died.
    ``state()`` hands the working copies over to the state it returns (their dicts are
    that state's now), so the next batch starts new working copies from it."""

    __slots__ = ("_state", "_registry", "_work")

    def __init__(self, state: RecordsState | None = None, registry: MergeRegistry | None = None) -> None:
        self._state = state if state is not None else RecordsState()
        self._registry = registry if registry is not None else _BUILTINS
        self._work: dict[str, _Work] = {}

    def state(self) -> RecordsState:
        """The records with every batch folded so far (the same object until the next fold)."""
        work = self._work
        if not work:
            return self._state
        records = copy_mapping(self._state.records)
        for stream, w in work.items():
            records[stream] = w.result()
        self._work = {}
        self._state = RecordsState(MappingProxyType(records))
        return self._state

    def fold(self, events: Iterable[RecordedEvent], *, shared_decode: bool = False) -> None:
        """Fold ``events`` in log order; events of other types are skipped.

        Patches whose fields are all LWW or merge fields of an unchanged strategy
        (nearly all of them) are decoded and applied here in one step (see ``_Work``
        for the clocks); anything else (manual fields, deletes, a field changing
        strategy, the shared decode) goes through ``decode_patch_body`` /
        ``apply_changes``, the code ``reconcile`` runs. Both give the same state: the
        fast path is ``apply_changes`` for those cases, minus the ``Effect`` the fold
        never reads."""
        reg = self._registry
        fns = reg._fns  # (registry.get without its frame; it raises for an unknown name)
        work = self._work
        get_work = work.get
        get_record = self._state.records.get
        for ev in events:
            if ev.type != RECORD_PATCHED:
                continue
            stream = ev.stream
            w = get_work(stream)
            if w is None:
                w = work[stream] = _new_work(get_record(stream), stream)
            data = ev.data
            if shared_decode or type(data) is not dict or data.get("manual") or data.get("deleted"):
                _fold_generic(w, ev, data, reg, shared_decode)
                continue

            # -- decode (decode_patch_body's, for a patch of lww and merge groups only)
            op_id, client, user = data["op"], data["client"], data["user"]
            text = data["hlc"]
            m = _HLC_FULLMATCH(text) if type(text) is str else None
            if m is not None:
                wall, logical, node = m.groups()
                if len(node) <= 64 and node.isascii():
                    hlc = _tuple_new(
                        HLCTimestamp, (int(wall, 16), 0 if logical == "00000000" else int(logical, 16), node)
                    )
                else:
                    hlc = HLCTimestamp.decode(text)
            else:
                hlc = HLCTimestamp.decode(text)
            vc = data["vc"]
            if type(vc) is dict and len(vc) == 1:
                # (VectorClock.from_dict's fast path, inline, for the usual clock of one node:
                # its checks, then the clock made without a frame)
                ((one, tick),) = vc.items()
                if type(one) is str and one and type(tick) is int and 0 < tick <= COUNTER_MAX:
                    opclock = _new_object(VectorClock)
                    _set_c(opclock, {one: tick})
                    _set_hash(opclock, None)
                    _set_sorted(opclock, True)
                else:
                    opclock = _clock_from_dict(vc)
                    one = None
            else:
                opclock = _clock_from_dict(vc)
                one = None
            stamp = _tuple_new(Stamp, (op_id, client, user, hlc, opclock))
            lww = data.get("lww")
            merges = data.get("merge")
            o = data["outcome"]
            kcode = _KIND_CODE.get(o["kind"])
            if kcode is None:  # not a kind: OutcomeKind raises ValueError, as decode_patch does
                kcode = _KIND_CODE[OutcomeKind(o["kind"])]
            receipts = w.receipts
            if op_id in receipts:
                continue  # an op is in the log once; tolerate a replayed copy all the same

            # -- apply (apply_changes's LWW and merge cases; see _Work for ``tracking``)
            # The record clock first: ``same`` is it before this op, when that is an object
            # (a field whose clock is it is tracking it); ``newer``: the op's clock covers it.
            c = w.c
            if c is None:
                same = w.base
                rc = same._c
            else:
                same = None
                rc = c
            if one is not None and len(rc) > 1:
                # (advance, inline, for its usual case: an op clock of one node and a record
                # clock of more, which the op clock cannot cover, clocks holding no zero
                # counters: ``newer`` is false. The same steps as advance otherwise.)
                if tick > rc.get(one, 0):  # the record clock moves: unwritten tracking fields settle
                    if w.tracking:
                        unwritten = None
                        for t in w.tracking:
                            if (lww is None or t not in lww) and (merges is None or t not in merges):
                                if unwritten is None:
                                    unwritten = [t]
                                else:
                                    unwritten.append(t)
                        if unwritten is not None:
                            w.settle(unwritten)
                            c = w.c
                    if c is None:
                        c = w.c = w.base._c.copy()
                    c[one] = tick
                newer = False
            else:
                newer = w.advance(opclock, lww, merges)
            fields, tracking = w.fields, w.tracking
            wall = hlc[0]
            if lww:
                for name, value in lww.items():
                    old = fields.get(name)
                    if old is None:
                        if newer:
                            tracking.add(name)
                        fields[name] = _tuple_new(LwwField, (stamp, value, False, None if newer else opclock))
                        continue
                    if type(old) is not LwwField:
                        w.apply_one(name, stamp, (name, _LWW, value, False, None), reg, newer)
                        continue
                    if name in tracking:
                        new_clock = None
                    elif newer or old[3] is same:
                        tracking.add(name)
                        new_clock = None
                    else:
                        new_clock = old[3].merge(opclock)
                    old_stamp = old[0]
                    ow = old_stamp[3][0]
                    if wall > ow if wall != ow else stamp.rank > old_stamp.rank:
                        fields[name] = _tuple_new(LwwField, (stamp, value, False, new_clock))
                    else:
                        fields[name] = _tuple_new(LwwField, (old_stamp, old[1], old[2], new_clock))
            if merges:
                for name, (fn, operand) in merges.items():
                    mf = fns.get(fn)
                    if mf is None:
                        mf = reg.get(fn)
                    value = mf.validate(operand)
                    old = fields.get(name)
                    if old is None:
                        if newer:
                            tracking.add(name)
                        acc = mf.initial
                        fields[name] = _tuple_new(MergeField, (
                            mf.name,
                            value if acc is NO_INITIAL else mf.fn(acc, value),
                            None if newer else opclock,
                            stamp,
                        ))
                        continue
                    if type(old) is not MergeField or old[0] != mf.name:
                        w.apply_one(name, stamp, (name, _MERGE, value, False, mf), reg, newer)
                        continue
                    if name in tracking:
                        new_clock = None
                    elif newer or old[2] is same:
                        tracking.add(name)
                        new_clock = None
                    else:
                        new_clock = old[2].merge(opclock)
                    old_stamp = old[3]
                    ow = old_stamp[3][0]
                    acc = old[1]
                    acc = value if acc is NO_INITIAL else mf.fn(acc, value)
                    wins = wall > ow if wall != ow else stamp.rank > old_stamp.rank
                    fields[name] = _tuple_new(MergeField, (mf.name, acc, new_clock, stamp if wins else old_stamp))
            if len(o) == 1:
                receipts[op_id] = len(receipts) << 3 | kcode
            else:
                receipts[op_id] = _receipt(
                    len(receipts), _KIND_VALUE[o["kind"]], tuple(o.get("conflicts", ())), tuple(o.get("resolved", ())),
                    tuple(o.get("superseded", ())),
                )


def _fold_generic(w: _Work, ev: RecordedEvent, data: Any, reg: MergeRegistry, shared_decode: bool) -> None:
    """One patch through ``decode_patch_body`` (or the shared cache) and ``apply_changes``."""
    changes: tuple | list
    kname: str | None
    if shared_decode:
        stamp, changes, outcome = decode_patch_cached(ev.tenant, ev.position, ev.stream, data, reg)
        kname, conflicts, resolved, superseded = _KIND_NAME[outcome[0]], outcome[3], outcome[4], outcome[5]
    else:
        # The outcome's parts straight from its body: what ``decode_patch`` would put
        # in an Outcome, which the receipt does not keep (see Receipts).
        stamp, changes, o = decode_patch_body(data, reg)
        kname = _KIND_VALUE.get(o["kind"])
        if kname is None:  # not a kind: OutcomeKind raises ValueError, as decode_patch does
            kname = _KIND_VALUE[OutcomeKind(o["kind"])]
        if len(o) == 1:
            conflicts = resolved = superseded = ()
        else:
            conflicts = tuple(o.get("conflicts", ()))
            resolved = tuple(o.get("resolved", ()))
            superseded = tuple(o.get("superseded", ()))
    op_id = stamp[0]
    receipts = w.receipts
    if op_id in receipts:
        return  # an op is in the log once; tolerate a replayed copy all the same
    covered, newer = w.relation(stamp[4])
    w.settle(list(w.tracking))  # apply_changes reads every field's clock as it is
    apply_changes(w.fields, w.stream, stamp, changes, reg, newer)
    if not covered:
        w.add(stamp[4])
    receipts[op_id] = _receipt(len(receipts), kname, conflicts, resolved, superseded)


_HLC_FULLMATCH = _HLC_TEXT.fullmatch
_clock_from_dict = VectorClock.from_dict
_LWW = Strategy.LWW
_MERGE = Strategy.MERGE
