"""Applying one accepted op's field changes to a record's fields.

Shared by ``reconcile`` (deciding) and the fold (rebuilding from events), so a
rebuild runs exactly the code that produced the state. Each strategy's update is
order-insensitive on its own:

- LWW keeps the write of greatest rank: a max, so any order gives the same winner;
- MANUAL keeps the causally maximal writes (a multi-value register): a write is
  dropped only when some write's clock strictly covers it, and that relation is a
  strict partial order, so the survivors are the same set in any order;
- MERGE folds each operand once into the accumulator with a commutative and
  associative function (op ids are deduplicated before we get here).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..clocks import Ordering, VectorClock
from .config import Strategy
from .merges import NO_INITIAL, MergeFunction, MergeRegistry
from .state import FieldState, LwwField, ManualField, MergeField, Stamp, Write, conflict_id

_CONCURRENT = Ordering.CONCURRENT
_AFTER = Ordering.AFTER
_LWW = Strategy.LWW
_MANUAL = Strategy.MANUAL


class Change(NamedTuple):
    """One field of one op, validated and normalized (a tuple: built once per field per op)."""

    name: str
    strategy: Strategy
    value: Any = None  # the value (LWW/manual) or the normalized operand (merge)
    deleted: bool = False
    merge: MergeFunction | None = None


class Effect:
    """What one op did, when it did more than plainly apply (see ``PLAIN``).

    The defaults are class attributes, so making one costs no ``__init__`` (an op that
    loses a field to a newer write, a common case, makes one); an instance only holds
    what it changed."""

    merged: bool = False
    conflicts: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()
    # (field, conflict id before, conflict id after, new ManualField) for manual fields
    transitions: tuple[tuple[str, str | None, str | None, ManualField], ...] = ()


# Most ops touch no conflict and lose no field: they share this one, never changed,
# instead of allocating an Effect each (allocation and GC were a third of the cost).
PLAIN = Effect()

# The field NamedTuples are built per field per op: through tuple.__new__ directly,
# without the Python frame of their generated ``__new__``.
_new = tuple.__new__


def apply_changes(
    fields: dict[str, FieldState],
    stream: str,
    stamp: Stamp,
    changes: list[Change] | list[tuple] | tuple,
    registry: MergeRegistry,
    newer: bool = False,
) -> Effect:
    """Mutates ``fields`` (a working copy owned by the caller). Returns ``PLAIN`` or an Effect.

    ``newer``: the caller knows that the op's clock covers every field clock here (it
    covers the record's clock, which is the merge of all of them; see
    ``ClockMerger.add``). Then each comparison would answer AFTER (or EQUAL, where
    the two clocks are equal, and either is the same new clock), so none is made.
    """
    eff = PLAIN
    clock = stamp.clock
    hlc = stamp.hlc
    rank = None
    # The clock step of the op's previous LWW/merge field: (its old clock, the new one).
    # An op's fields often share their clock object (fields written by the same ops get
    # the same merge, and keep sharing it from here on): then the answer is the same.
    # (``seen_new`` is read only once ``seen_old`` is set: its first value is never used.)
    seen_old: VectorClock | None = None
    seen_new = clock
    for name, strategy, value, deleted, mf in changes:
        old = fields.get(name)
        if strategy is _MANUAL:
            w = Write(stamp, value, deleted)
            if old is None:
                fields[name] = ManualField((w,), clock)
                continue
            if type(old) is not ManualField:
                old = _to_manual(old, registry)
            if eff is PLAIN:
                eff = Effect()
            versions = old.versions
            if any(clock < v.stamp.clock for v in versions):
                # Someone already wrote over this version knowingly: it arrives late.
                eff.superseded += (name,)
                fields[name] = ManualField(versions, old.clock.merge(clock), old.conflict_id)
                continue
            keep = [v for v in versions if not v.stamp.clock < clock]
            keep.append(w)
            if len(keep) > 1:
                keep.sort(key=_rank)
                cid = conflict_id(stream, name, [v.stamp.op_id for v in keep])
                eff.conflicts += (cid,)
            else:
                cid = None
            new = ManualField(tuple(keep), old.clock.merge(clock), cid)
            fields[name] = new
            if cid != old.conflict_id:
                if cid is None:
                    eff.resolved += (old.conflict_id,)  # type: ignore[operator]
                eff.transitions += ((name, old.conflict_id, cid, new),)
            continue
        is_lww = strategy is _LWW
        if old is None:
            if is_lww:
                fields[name] = _new(LwwField, (stamp, value, deleted, clock))
            else:
                acc = mf.initial
                fields[name] = _new(
                    MergeField, (mf.name, value if acc is NO_INITIAL else mf.fn(acc, value), clock, stamp)
                )
            continue
        if is_lww:
            if type(old) is not LwwField:
                old = _to_lww(old, registry)
            old_clock = old[3]
            old_stamp = old[0]
        else:
            if type(old) is not MergeField or old[0] != mf.name:
                old = _to_merge(old, mf, registry)
            old_clock = old[2]
            old_stamp = old[3]
        # The field's new clock: the op's when it comes after (or equals) the field's
        # history, the merge of both when they are concurrent.
        if newer:
            new_clock = clock
        elif old_clock is seen_old:
            new_clock = seen_new  # (a concurrent one already marked the Effect merged)
        else:
            order = clock.compare(old_clock)
            if order is _AFTER:
                new_clock = clock
            elif order is _CONCURRENT:
                if eff is PLAIN:
                    eff = Effect()
                eff.merged = True
                new_clock = old_clock.merge(clock)
            else:
                new_clock = old_clock
            seen_old, seen_new = old_clock, new_clock
        # The LWW order is (wall, logical, client, op id); walls usually differ.
        ow = old_stamp[3][0]
        if hlc[0] != ow:
            wins = hlc[0] > ow
        else:
            if rank is None:
                rank = stamp.rank
            wins = rank > old_stamp.rank
        if is_lww:
            if wins:
                fields[name] = _new(LwwField, (stamp, value, deleted, new_clock))
            else:
                if eff is PLAIN:
                    eff = Effect()
                eff.superseded += (name,)
                # (``old`` may be a converted field of another strategy: always store it)
                fields[name] = _new(LwwField, (old_stamp, old[1], old[2], new_clock))
        else:
            # Every operand counts; the greatest-ranked write describes the field.
            acc = old[1]
            acc = value if acc is NO_INITIAL else mf.fn(acc, value)
            fields[name] = _new(MergeField, (mf.name, acc, new_clock, stamp if wins else old_stamp))
    return eff


def _rank(w: Write) -> tuple:
    return w.stamp.rank


# ---- strategy changes (the configuration of a field changed over its life)


def _current(old: FieldState, registry: MergeRegistry) -> Write:
    if isinstance(old, MergeField):  # (the field types are never subclassed)
        value = old.value
        if old.merge in registry and old.acc is not NO_INITIAL:
            value = registry.get(old.merge).encode(old.acc)
        return Write(old.last, value, old.acc is NO_INITIAL)
    return old.current


def _to_lww(old: FieldState, registry: MergeRegistry) -> LwwField:
    w = max(old.versions, key=_rank) if type(old) is ManualField else _current(old, registry)
    return LwwField(w.stamp, w.value, w.deleted, old.clock)


def _to_manual(old: FieldState, registry: MergeRegistry) -> ManualField:
    return ManualField((_current(old, registry),), old.clock)


def _to_merge(old: FieldState, mf: MergeFunction, registry: MergeRegistry) -> MergeField:
    cur = _current(old, registry)
    acc = mf.initial
    if not cur.deleted:
        try:
            acc = mf.combine(acc, mf.validate(cur.value))
        except (TypeError, ValueError):
            pass  # the old value is no operand of the new function: start afresh
    return MergeField(mf.name, acc, old.clock, cur.stamp)
