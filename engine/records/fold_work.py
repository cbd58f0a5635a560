"""A record's mutable working copy while fold.py folds a batch: fields, clock, receipts."""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ..clocks import EMPTY_CLOCK, VectorClock, _new_object, _set_c, _set_hash, _set_sorted
from .kernel import apply_changes
from .merges import MergeRegistry
from .receipts import ReceiptEntry, Receipts, _extendable
from .state import LwwField, MergeField, RecordState, Stamp, copy_mapping

_tuple_new = tuple.__new__
_NONE: dict = {}  # stands in for an absent group of a patch


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
            self.receipts: dict[str, ReceiptEntry] = {}
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
        covered, newer = self.relation(clock)
        if covered:  # the record clock does not change
            return newer
        tracking = self.tracking
        if tracking:
            lww, merges = lww or _NONE, merges or _NONE
            unwritten = [n for n in tracking if n not in lww and n not in merges]
            if unwritten:
                self.settle(unwritten)
        self.add(clock)
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
