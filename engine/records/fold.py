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

from ..clocks import _HLC_TEXT, COUNTER_MAX, EMPTY_CLOCK, HLCTimestamp, VectorClock, _new_object, _set_c, _set_hash, _set_sorted
from ..events import RecordedEvent
from .config import Strategy
from .kernel import apply_changes
from .merges import NO_INITIAL, MergeRegistry
from .outcomes import Outcome, OutcomeKind
from .payloads import RECORD_PATCHED, decode_patch_body, decode_patch_cached
from .state import LwwField, MergeField, RecordsState, RecordState, Stamp, copy_mapping

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
    collection cost more than the fold itself. Most outcomes name no conflict and no
    field: their entry is the int ``index << 3 | kind code`` (see ``_receipt``), no
    tuple to build, and a dict of ints the collector never tracks. The ``Outcome`` is
    built when asked for, equal to the one the event carried. An outcome that does not
    fit those forms (none does today) is kept as ``(index, outcome)``."""

    __slots__ = ("_d", "_n", "_stream")

    def __init__(self, d: dict[str, tuple], n: int, stream: str = "") -> None:
        self._d = d
        self._n = n
        self._stream = stream

    def _outcome(self, op_id: str, e: int | tuple) -> Outcome:
        if type(e) is int:
            return _tuple_new(Outcome, (_KINDS[e & 7], op_id, self._stream, (), (), (), None, "", None))
        if len(e) == 2:
            return e[1]
        return _tuple_new(Outcome, (_KIND_BY_NAME[e[1]], op_id, self._stream, e[2], e[3], e[4], None, "", None))

    def __getitem__(self, op_id: str) -> Outcome:
        e = self._d[op_id]
        if (e >> 3 if type(e) is int else e[0]) < self._n:
            return self._outcome(op_id, e)
        raise KeyError(op_id)

    def get(self, op_id: str, default: Any = None) -> Any:
        e = self._d.get(op_id)
        if e is None or (e >> 3 if type(e) is int else e[0]) >= self._n:
            return default
        return self._outcome(op_id, e)

    def __contains__(self, op_id: object) -> bool:
        e = self._d.get(op_id)  # type: ignore[call-overload]
        return e is not None and (e >> 3 if type(e) is int else e[0]) < self._n

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
_KINDS = tuple(OutcomeKind)  # by kind code (fewer than 8)
_KIND_CODE = {k.value: i for i, k in enumerate(_KINDS)}  # by name (and by kind: a StrEnum)


def _receipt(index: int, kname: str, conflicts: tuple, resolved: tuple, superseded: tuple) -> int | tuple:
    """A receipt entry (see Receipts): an int when the outcome names nothing."""
    if conflicts or resolved or superseded:
        return (index, kname, conflicts, resolved, superseded)
    return index << 3 | _KIND_CODE[kname]


def _entry(index: int, o: Outcome, stream: str) -> int | tuple:
    if o[6] is None and not o[7] and o[8] is None and o[2] == stream and type(o[0]) is OutcomeKind:
        return _receipt(index, _KIND_NAME[o[0]], o[3], o[4], o[5])
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
    replicas; the result is the same either way.

    Patches whose fields are all LWW or merge fields of an unchanged strategy (nearly all
    of them) are decoded and applied here in one step (see ``_Work`` for the clocks);
    anything else (manual fields, deletes, a field changing strategy, the shared decode)
    goes through ``decode_patch_body`` / ``apply_changes``, the code ``reconcile`` runs.
    Both give the same state: the fast path is ``apply_changes`` for those cases, minus
    the ``Effect`` the fold never reads."""
    reg = registry if registry is not None else _BUILTINS
    fns = reg._fns  # (registry.get without its frame; it raises for an unknown name)
    work: dict[str, _Work] = {}
    get_work = work.get
    get_record = state.records.get
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
                hlc = _tuple_new(HLCTimestamp, (int(wall, 16), 0 if logical == "00000000" else int(logical, 16), node))
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
        if kcode is None:
            OutcomeKind(o["kind"])  # raises ValueError, as decode_patch does
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
                        mf.name, value if acc is NO_INITIAL else mf.fn(acc, value), None if newer else opclock, stamp,
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
    if not work:
        return state
    records = copy_mapping(state.records)
    for stream, w in work.items():
        records[stream] = w.result()
    return RecordsState(MappingProxyType(records))


def _fold_generic(w: _Work, ev: RecordedEvent, data: Any, reg: MergeRegistry, shared_decode: bool) -> None:
    """One patch through ``decode_patch_body`` (or the shared cache) and ``apply_changes``."""
    if shared_decode:
        stamp, changes, outcome = decode_patch_cached(ev.tenant, ev.position, ev.stream, data, reg)
        kname, conflicts, resolved, superseded = _KIND_NAME[outcome[0]], outcome[3], outcome[4], outcome[5]
    else:
        # The outcome's parts straight from its body: what ``decode_patch`` would put
        # in an Outcome, which the receipt does not keep (see Receipts).
        stamp, changes, o = decode_patch_body(data, reg)
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
    receipts = w.receipts
    if op_id in receipts:
        return  # an op is in the log once; tolerate a replayed copy all the same
    covered, newer = w.relation(stamp[4])
    w.settle(list(w.tracking))  # apply_changes reads every field's clock as it is
    apply_changes(w.fields, w.stream, stamp, changes, reg, newer)
    if not covered:
        w.add(stamp[4])
    receipts[op_id] = _receipt(len(receipts), kname, conflicts, resolved, superseded)


class _Work:
    """One record's mutable working copy during a fold: fields, clock and receipts.

    The record clock is ``base`` while this fold has not changed it, then the dict
    ``c`` (copied from ``base`` once, then merged into in place).

    Field clocks: the usual op writes the same fields as the ops before it, and each
    such field's clock is then the record clock (both are the merge of the same op
    clocks). Building that clock per field per op was most of the fold's cost. So
    the fields in ``tracking`` hold no clock of their own while the fold runs (their
    tuple's clock slot is stale): their clock is the record clock, whatever it
    becomes. A tracking field that an op does not write leaves the set, with the
    record clock as it was before that op (``settle``); ``result`` gives the others
    the final record clock. An op writing a field makes it tracking when the field's
    clock is the record clock object while that has not changed (``base`` with no
    ``c``: as a fold leaves its fields), or when the op's clock covers the record
    clock (the field's clock is then the op's, which is the new record clock)."""

    __slots__ = ("stream", "fields", "receipts", "base", "c", "tracking")

    def __init__(self, rec: RecordState | None, stream: str) -> None:
        self.stream = stream
        self.c: dict[str, int] | None = None
        if rec is None:
            self.fields: dict[str, Any] = {}
            self.base = EMPTY_CLOCK
            self.receipts: dict[str, tuple] = {}
            self.tracking: set[str] = set()
            return
        # (copy_mapping's and _extendable's usual cases, inline: once per record per batch)
        fields = rec[1]
        fields = fields.copy() if type(fields) is MappingProxyType else copy_mapping(fields)
        self.fields = fields if type(fields) is dict else dict(fields)
        self.base = rec[2]
        r = rec[3]
        self.receipts = r._tip() if type(r) is Receipts and r._stream == stream else _extendable(r, stream)
        self.tracking = set()

    def advance(self, clock: VectorClock, lww: Any, merges: Any) -> bool:
        """Merge the clock of an op writing the fields of ``lww`` and ``merges`` (and no
        other) into the record clock, before the op's fields are applied; returns
        whether ``clock`` covers the record clock as it was (``newer``).

        A field tracking the record clock that the op does not write keeps the record
        clock as it was before the op (settled here). One the op writes through
        ``apply_one`` (a strategy change) is settled there, after: its clock becomes the
        merge of the old record clock and the op's, which is the new record clock."""
        c = self.c
        if c is None:
            c = self.base._c
        b = clock._c
        for node, n in b.items():
            if n > c.get(node, 0):
                break
        else:  # covered: the record clock does not change
            return b == c  # (covered both ways: equal)
        newer = len(b) >= len(c)
        if newer:
            for node, n in c.items():
                if n > b.get(node, 0):
                    newer = False
                    break
        tracking = self.tracking
        if tracking:
            lww, merges = lww or _NONE, merges or _NONE
            unwritten = [n for n in tracking if n not in lww and n not in merges]
            if unwritten:
                self.settle(unwritten)
        c = self.c
        if c is None:
            c = self.c = self.base._c.copy()
        get = c.get
        for node, n in b.items():
            if n > get(node, 0):
                c[node] = n
        return newer

    def relation(self, clock: VectorClock) -> tuple[bool, bool]:
        """(covered, newer): whether the record clock covers ``clock`` (it does not
        change), and whether ``clock`` covers the record clock (it becomes ``clock``)."""
        c = self.c
        if c is None:
            c = self.base._c
        b = clock._c
        for node, n in b.items():
            if n > c.get(node, 0):
                break
        else:
            return True, b == c  # (covered both ways: equal)
        if len(b) < len(c):
            return False, False
        for node, n in c.items():
            if n > b.get(node, 0):
                return False, False
        return False, True

    def add(self, clock: VectorClock) -> None:
        """Merge ``clock`` into the record clock."""
        c = self.c
        if c is None:
            c = self.c = self.base._c.copy()
        get = c.get
        for node, n in clock._c.items():
            if n > get(node, 0):
                c[node] = n

    def _clock(self) -> VectorClock:
        """The record clock now, as a VectorClock (which then owns ``c``: a later ``add``
        copies it again)."""
        c = self.c
        if c is None:
            return self.base
        base = self.base
        # New nodes were appended at the end; the canonical order is sorted.
        in_order = base._sorted and len(c) == len(base._c)
        vc = self.base = VectorClock._trusted(c) if in_order else VectorClock._unsorted(c)
        self.c = None
        return vc

    def settle(self, names: list[str]) -> None:
        """Give these tracking fields the record clock as it is now; they stop tracking."""
        if not names:
            return
        clock = self._clock()
        fields, tracking = self.fields, self.tracking
        for name in names:
            f = fields[name]
            if (f[3] if type(f) is LwwField else f[2]) is not clock:
                fields[name] = _with_clock(f, clock)
            tracking.discard(name)

    def apply_one(self, name: str, stamp: Stamp, change: tuple, reg: MergeRegistry, newer: bool) -> None:
        """One field through ``apply_changes`` (a field changing strategy), after
        ``advance``. A tracking field's clock was the old record clock: it is given the
        new one, which covers the op's clock, so that apply_changes computes the same
        new field clock from it (the merge of the two is the new record clock)."""
        if name in self.tracking:
            self.settle([name])
        apply_changes(self.fields, self.stream, stamp, (change,), reg, newer)

    def result(self) -> RecordState:
        c = self.c
        if c is None:
            clock = self.base
        else:
            # (_clock, inline: once per record per batch; see ClockMerger.result for the order)
            base = self.base
            clock = _new_object(VectorClock)
            _set_c(clock, c)
            _set_hash(clock, None)
            _set_sorted(clock, base._sorted and len(c) == len(base._c))
        fields = self.fields
        for name in self.tracking:
            f = fields[name]
            # (_with_clock, inline: one or two per record per batch)
            if type(f) is LwwField:
                if f[3] is not clock:
                    fields[name] = _tuple_new(LwwField, (f[0], f[1], f[2], clock))
            elif f[2] is not clock:
                fields[name] = _tuple_new(MergeField, (f[0], f[1], clock, f[3]))
        # (Receipts(...) without its __init__ frame: once per record per batch)
        receipts = self.receipts
        view = _new_object(Receipts)
        view._d = receipts
        view._n = len(receipts)
        view._stream = self.stream
        return _tuple_new(RecordState, (self.stream, MappingProxyType(fields), clock, view))


def _new_work(rec: RecordState | None, stream: str) -> _Work:
    """``_Work(rec, stream)``, once per record per batch, for its usual cases: a plain
    function call is cheaper than a class call, which runs ``__init__`` in a new frame."""
    if rec is None:
        return _Work(rec, stream)
    r = rec[3]
    if type(r) is not Receipts or r._stream != stream:
        return _Work(rec, stream)
    w = _new_object(_Work)
    w.stream = stream
    w.c = None
    fields = rec[1]
    fields = fields.copy() if type(fields) is MappingProxyType else copy_mapping(fields)
    w.fields = fields if type(fields) is dict else dict(fields)
    w.base = rec[2]
    d = r._d
    w.receipts = d if len(d) == r._n else r._tip()  # (_tip's usual case inline: the newest view)
    w.tracking = set()
    return w


def _with_clock(f: Any, clock: VectorClock) -> Any:
    if type(f) is LwwField:
        return _tuple_new(LwwField, (f[0], f[1], f[2], clock))
    return _tuple_new(MergeField, (f[0], f[1], clock, f[3]))


_HLC_FULLMATCH = _HLC_TEXT.fullmatch
_clock_from_dict = VectorClock.from_dict
_NONE: dict = {}
_LWW = Strategy.LWW
_MERGE = Strategy.MERGE
