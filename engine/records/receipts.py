"""A record's receipts: the ops it accepted and each one's outcome, shared by folds.

``reconcile`` answers a repeated op with its original outcome, so record state keeps
one receipt per op ever accepted. The fold (fold.py) builds them as ``Receipts``
views over one shared, append-only dict.
"""
from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any, Iterator

from .outcomes import Outcome, OutcomeKind


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

    def __init__(self, d: dict[str, ReceiptEntry], n: int, stream: str = "") -> None:
        self._d = d
        self._n = n
        self._stream = stream

    # The entry's form is told by ``type(e) is int`` (cheaper than ``isinstance``), which
    # mypy does not narrow in the other branch (an int subclass would pass it): there,
    # ``e`` is a tuple, hence the ``type: ignore`` comments below.

    def _outcome(self, op_id: str, e: ReceiptEntry) -> Outcome:
        if type(e) is int:
            return _tuple_new(Outcome, (_KINDS[e & 7], op_id, self._stream, (), (), (), None, "", None))
        t: tuple = e  # type: ignore[assignment]  # not an int: a tuple (see above)
        if len(t) == 2:
            return t[1]
        return _tuple_new(Outcome, (_KIND_BY_NAME[t[1]], op_id, self._stream, t[2], t[3], t[4], None, "", None))

    def __getitem__(self, op_id: str) -> Outcome:
        e = self._d[op_id]
        if (e >> 3 if type(e) is int else e[0]) < self._n:  # type: ignore[index]
            return self._outcome(op_id, e)
        raise KeyError(op_id)

    def get(self, op_id: str, default: Any = None) -> Any:
        e = self._d.get(op_id)
        if e is None or (e >> 3 if type(e) is int else e[0]) >= self._n:  # type: ignore[index]
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

    def _tip(self) -> dict[str, ReceiptEntry]:
        """A dict a fold may append to: the shared one if this view is its newest, else a copy."""
        d = self._d
        if len(d) == self._n:
            return d
        return {k: d[k] for k in islice(d, self._n)}


# An entry of the shared dict (see Receipts): ``index << 3 | kind code``, or a tuple.
ReceiptEntry = int | tuple

_tuple_new = tuple.__new__
_KIND_BY_NAME = {k.value: k for k in OutcomeKind}
_KIND_NAME = {k: k.value for k in OutcomeKind}
_KIND_VALUE = {k.value: k.value for k in OutcomeKind}  # the shared name strings
_KINDS = tuple(OutcomeKind)  # by kind code (fewer than 8)
_KIND_CODE = {k.value: i for i, k in enumerate(_KINDS)}  # by name (and by kind: a StrEnum)


def _receipt(index: int, kname: str, conflicts: tuple, resolved: tuple, superseded: tuple) -> ReceiptEntry:
    """A receipt entry (see Receipts): an int when the outcome names nothing."""
    if conflicts or resolved or superseded:
        return (index, kname, conflicts, resolved, superseded)
    return index << 3 | _KIND_CODE[kname]


def _entry(index: int, o: Outcome, stream: str) -> ReceiptEntry:
    if o[6] is None and not o[7] and o[8] is None and o[2] == stream and type(o[0]) is OutcomeKind:
        return _receipt(index, _KIND_NAME[o[0]], o[3], o[4], o[5])
    return (index, o)


def _extendable(receipts: Mapping[str, Any], stream: str) -> dict[str, ReceiptEntry]:
    if type(receipts) is Receipts and receipts._stream == stream:
        return receipts._tip()
    return {op_id: _entry(i, o, stream) for i, (op_id, o) in enumerate(receipts.items())}
