"""Record state: per field, the write(s) that decide its value, each with its clocks.

The data part (``RecordState.fields`` and ``clock``) is a CRDT: replicas that
accepted the same set of ops hold equal data whatever the order they saw them in.
``receipts`` (op id -> first outcome) is each replica's own memory of what it
answered, used to answer duplicates; it depends on arrival order by nature.

Treat every value here as immutable: the reconciler shares them between states.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from ..clocks import EMPTY_CLOCK, HLCTimestamp, VectorClock
from ..events import Actor
from .merges import NO_INITIAL
from .ops import ResolveOp
from .outcomes import Outcome


class Stamp(NamedTuple):
    """Who wrote, when, and what they had seen: shared by all field writes of one op.

    The state's value types are NamedTuples: immutable like frozen dataclasses,
    and several times cheaper to build on the reconcile hot path.
    """

    op_id: str
    client: str
    user: str
    hlc: HLCTimestamp
    clock: VectorClock

    @property
    def rank(self) -> tuple:
        """(wall, logical, client, op id): the LWW order. HLC ties go to the greater
        client id; equal (hlc, client) only happens when a client reuses a timestamp,
        and the op id still makes the order total so every replica picks the same."""
        h = self.hlc
        return (h[0], h[1], self.client, self.op_id)

    @property
    def author(self) -> Actor:
        return Actor(self.user, self.client)


class Write(NamedTuple):
    stamp: Stamp
    value: Any = None
    deleted: bool = False  # a tombstone: the field was deleted by this write


class LwwField(NamedTuple):
    """The winning write, flattened (one object per field instead of two)."""

    stamp: Stamp
    value: Any
    deleted: bool
    clock: VectorClock  # merge of the clocks of every write seen on this field

    @property
    def winner(self) -> Write:
        return Write(self.stamp, self.value, self.deleted)

    @property
    def current(self) -> Write:
        return Write(self.stamp, self.value, self.deleted)

    @property
    def hlc(self) -> HLCTimestamp:
        return self.stamp.hlc

    @property
    def author(self) -> Actor:
        return self.stamp.author


class ManualField(NamedTuple):
    """The causally maximal writes (a multi-value register), sorted by LWW rank.

    One version: no conflict. Several: a conflict with id ``conflict_id``; the
    field shows ``versions[0]``, the earliest write, which is the value the server
    already held when the later concurrent writes arrived (in the usual order)
    and, being a pure function of the set, the same on every replica.
    """

    versions: tuple[Write, ...]
    clock: VectorClock
    conflict_id: str | None = None

    @property
    def current(self) -> Write:
        return self.versions[0]

    @property
    def value(self) -> Any:
        return self.versions[0].value

    @property
    def deleted(self) -> bool:
        return self.versions[0].deleted

    @property
    def hlc(self) -> HLCTimestamp:
        return self.versions[0].stamp.hlc

    @property
    def author(self) -> Actor:
        return self.versions[0].stamp.author


class MergeField(NamedTuple):
    merge: str
    acc: Any  # NO_INITIAL until the first operand, for functions without an identity
    clock: VectorClock
    last: Stamp  # the greatest-ranked contributing write: its HLC and author describe the field

    @property
    def value(self) -> Any:
        return None if self.acc is NO_INITIAL else self.acc

    @property
    def deleted(self) -> bool:
        return False

    @property
    def hlc(self) -> HLCTimestamp:
        return self.last.hlc

    @property
    def author(self) -> Actor:
        return self.last.author


FieldState = LwwField | ManualField | MergeField


def copy_mapping(m: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict with ``m``'s entries. ``dict(m)`` of a MappingProxyType takes the generic
    path (keys, then a lookup per key), about ten times the cost of copying the dict
    behind it, which ``MappingProxyType.copy`` does; states are copied per batch."""
    t = type(m)
    if t is dict:
        return m.copy()  # type: ignore[attr-defined]
    if t is MappingProxyType:
        c = m.copy()  # type: ignore[attr-defined]  # (a proxy: the copy method of the mapping behind it)
        return c if type(c) is dict else dict(c)
    return dict(m)


def conflict_id(stream: str, field_name: str, op_ids: list[str] | tuple[str, ...]) -> str:
    """Deterministic: the same concurrent versions give the same id on every replica."""
    h = hashlib.sha256()
    h.update(stream.encode())
    h.update(b"\0")
    h.update(field_name.encode())
    for op_id in sorted(op_ids):
        h.update(b"\0")
        h.update(op_id.encode())
    return "cf_" + h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Conflict:
    id: str
    stream: str
    field: str
    versions: tuple[Write, ...]  # all concurrent versions, with their authors and clocks
    held: Write  # the version the field shows meanwhile

    def resolution(
        self,
        *,
        op_id: str,
        client: str,
        user: str,
        hlc: HLCTimestamp,
        choice: str,
        value: Any = NO_INITIAL,
        deleted: bool = False,
        base_clock: VectorClock = EMPTY_CLOCK,
    ) -> ResolveOp:
        """A ResolveOp choosing a version (``choice`` = its op id) or a custom ``value``.

        ``base_clock`` is the client's own clock for this record; the op's clock covers
        it and every version, plus the client's new tick.
        """
        if value is NO_INITIAL:
            chosen = next((w for w in self.versions if w.stamp.op_id == choice), None)
            if chosen is None:
                raise ValueError(f"{choice!r} is not a version of conflict {self.id}")
            value, deleted = chosen.value, chosen.deleted
        clock = base_clock
        for w in self.versions:
            clock = clock.merge(w.stamp.clock)
        return ResolveOp(
            op_id=op_id,
            client=client,
            user=user,
            stream=self.stream,
            clock=clock.increment(client),
            hlc=hlc,
            conflict_id=self.id,
            field=self.field,
            choice=choice,
            value=None if deleted else value,
            deleted=deleted,
        )


_EMPTY: Mapping[str, Any] = MappingProxyType({})


class RecordState(NamedTuple):
    """One record. ``fields`` and ``receipts`` are read-only by contract: the
    reconciler builds new mappings instead of changing them."""

    stream: str
    fields: Mapping[str, FieldState] = _EMPTY
    # merge of every accepted op's clock, so it covers every field's clock (a merge of
    # the clocks of the ops that wrote it); apply_changes relies on that
    clock: VectorClock = EMPTY_CLOCK
    receipts: Mapping[str, Outcome] = _EMPTY  # op id -> its first outcome

    @property
    def version(self) -> int:
        """How many distinct ops the record has accepted (order-independent)."""
        return len(self.receipts)

    def values(self) -> dict[str, Any]:
        """The record as its readers see it: field -> value, deleted fields left out."""
        return {
            k: f.value
            for k, f in self.fields.items()
            if not f.deleted and not (type(f) is MergeField and f.acc is NO_INITIAL)
        }

    def conflicts(self) -> tuple[Conflict, ...]:
        out = []
        for name in sorted(self.fields):
            f = self.fields[name]
            if type(f) is ManualField and f.conflict_id is not None:
                out.append(Conflict(f.conflict_id, self.stream, name, f.versions, f.versions[0]))
        return tuple(out)

    def same_data(self, other: RecordState) -> bool:
        """Equal CRDT data (fields and clock), ignoring the per-replica receipts."""
        return self.stream == other.stream and self.clock == other.clock and self.fields == other.fields


@dataclass(frozen=True, slots=True)
class RecordsState:
    """Many records by stream name: the input and output of ``reconcile``."""

    records: Mapping[str, RecordState] = field(default_factory=lambda: _EMPTY)

    def get(self, stream: str) -> RecordState:
        r = self.records.get(stream)
        return r if r is not None else RecordState(stream)

    def __len__(self) -> int:
        return len(self.records)

    def same_data(self, other: RecordsState) -> bool:
        if self.records.keys() != other.records.keys():
            return False
        return all(r.same_data(other.records[s]) for s, r in self.records.items())
