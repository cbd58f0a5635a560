"""``reconcile``: decide what a batch of client ops does to record state.

Pure and deterministic: the same state, ops and config give the same new state,
events and outcomes. Replicas that accept the same ops in any order, with any
duplicates, end with the same record data (see state.py and kernel.py for why).

Rejections depend only on the op, the config and ``now_ms``, never on the state,
so a rejection cannot make replicas diverge. (One exception, off by default:
``config.causal_clocks`` compares an op's clock with its record's. Only the server
reconciles with it on: replicas fold the server's log, never reconcile.) They are not
remembered: resubmitting a rejected op is judged again, with the same answer while the
config is the same.
"""
from __future__ import annotations

import math
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Iterable, NamedTuple

from ..clocks import EMPTY_CLOCK, ClockMerger, HLCTimestamp, VectorClock
from ..events import STREAM_MAX, STREAM_RE, Actor
from .config import ResolutionConfig, Strategy
from .kernel import PLAIN, Change, apply_changes
from .ops import ClientOp, Op, ResolveOp, collection_of
from .outcomes import Outcome, OutcomeKind, RejectReason, rejected
from .payloads import StreamEvent, conflict_detected, conflict_resolved, record_patched
from .state import RecordsState, RecordState, Stamp, copy_mapping

VALUE_DEPTH_MAX = 32
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can carry


_APPLIED = OutcomeKind.APPLIED
_MERGED = OutcomeKind.MERGED
_CONFLICT = OutcomeKind.CONFLICT


class Reconciliation(NamedTuple):
    state: RecordsState
    events: list[StreamEvent]
    outcomes: list[Outcome]


class _Reject(Exception):
    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail


# A record's mutable working copy, private to one reconcile call: (fields, clock merger,
# receipts). A plain tuple: most ops are the only op of their record in a batch, so
# this is built about once per op.
_Work = tuple


def _work(rec: RecordState | None) -> _Work:
    if rec is None:
        return ({}, ClockMerger(EMPTY_CLOCK), {})
    return (copy_mapping(rec[1]), ClockMerger(rec[2]), copy_mapping(rec[3]))


_PROXY = MappingProxyType


# NamedTuples built per op go through tuple.__new__ directly: the generated
# ``__new__`` is a Python frame that only forwards its arguments.
_tuple_new = tuple.__new__


def reconcile(
    state: RecordsState,
    ops: Iterable[Op],
    config: ResolutionConfig,
    *,
    now_ms: int | None = None,
) -> Reconciliation:
    """Apply ``ops`` in order; returns (new state, events to append, one outcome per op).

    ``now_ms`` (the server's physical time) enables the clock-skew and op-age checks
    configured in ``config``; without it they are skipped.

    Callers that reconcile big batches pause the cyclic garbage collector around the
    call (store/gcpause.py): a batch builds one new record state and its events, all
    acyclic and all kept; with the collector running, collections were about a third of
    the time of a 10,000-op batch. The engine does not touch the collector itself.
    """
    return _reconcile(state, ops, config, now_ms)


def _reconcile(state: RecordsState, ops: Iterable[Op], config: ResolutionConfig, now_ms: int | None) -> Reconciliation:
    work: dict[str, _Work] = {}
    events: list[StreamEvent] = []
    outcomes: list[Outcome] = []
    registry = config.registry
    records_in = state.records
    actors: dict[str, Actor] = {}
    append_event = events.append
    append_outcome = outcomes.append
    for op in ops:
        t = type(op)
        if t is ClientOp or t is ResolveOp:
            op_id = op.op_id
            client = op.client
            user = op.user
            stream = op.stream
            clock = op.clock
            ok = (
                type(op_id) is str
                and op_id != ""
                and type(client) is str
                and client != ""
                and type(user) is str
                and type(stream) is str
                and isinstance(clock, VectorClock)
                and type(op.hlc) is HLCTimestamp
            )
        else:
            ok = False
        if not ok:
            oid = getattr(op, "op_id", "")
            append_outcome(rejected(oid if isinstance(oid, str) else "", "", RejectReason.INVALID_OP))
            continue
        w = work.get(stream)
        rec = None
        if w is not None:
            first = w[2].get(op_id)
        else:
            rec = records_in.get(stream)
            first = rec[3].get(op_id) if rec is not None else None
        if first is not None:
            append_outcome(Outcome(OutcomeKind.DUPLICATE, op_id, stream, original=first))
            continue
        try:
            changes = _validate(op, config, now_ms)
            if config.causal_clocks:
                # What the record has accepted so far (this batch's earlier ops included).
                if w is not None:
                    m = w[1]
                    known = m._c if m._c is not None else m._base._c
                else:
                    known = rec[2]._c if rec is not None else {}
                _check_causal(op, known)
        except _Reject as rej:
            append_outcome(rejected(op_id, stream, rej.reason, rej.detail))
            continue
        if w is None:
            # (_work, inline: once per op in the usual batch.) A state's mappings are
            # proxies of dicts (or dicts): ``.copy()`` is the C copy of the dict.
            if rec is None:
                w = ({}, ClockMerger(EMPTY_CLOCK), {})
            else:
                f, r = rec[1], rec[3]
                w = (
                    f.copy() if type(f) is _PROXY or type(f) is dict else dict(f),
                    ClockMerger(rec[2]),
                    r.copy() if type(r) is _PROXY or type(r) is dict else dict(r),
                )
                if type(w[0]) is not dict or type(w[2]) is not dict:
                    w = _work(rec)  # a proxy of another mapping type
            work[stream] = w
        stamp = _tuple_new(Stamp, (op_id, client, user, op.hlc, clock))
        # The record clock first: when the op's clock covers it, it covers every field's
        # clock too, and apply_changes needs no comparison.
        eff = apply_changes(w[0], stream, stamp, changes, registry, w[1].add(clock))
        if eff is PLAIN:
            outcome = _tuple_new(Outcome, (_APPLIED, op_id, stream, (), (), (), None, "", None))
        else:
            kind = _CONFLICT if eff.conflicts else _MERGED if eff.merged else _APPLIED
            outcome = _tuple_new(
                Outcome, (kind, op_id, stream, eff.conflicts, eff.resolved, eff.superseded, None, "", None)
            )
        w[2][op_id] = outcome
        append_outcome(outcome)
        # One Actor per client (a client acts for one user; another user gets a new one).
        actor = actors.get(client)
        if actor is None or actor.user != user:
            actor = actors[client] = Actor(user, client)
        # (``t`` is ``type(op)``, which mypy does not connect to ``op``: hence the ignores)
        if t is ResolveOp:
            resolves: tuple[str, str] | None = (op.conflict_id, op.choice)  # type: ignore[union-attr]
        else:
            resolves = None
        # (clock.to_dict(), without its two calls)
        vc = dict(clock._c if clock._sorted else clock._canonical())
        patched = record_patched(stamp, changes, outcome, vc, op.base_version, resolves, actor)
        append_event(_tuple_new(StreamEvent, (stream, patched)))
        if eff is not PLAIN:
            for name, old_id, new_id, new_field in eff.transitions:
                if new_id is not None:
                    append_event(conflict_detected(stream, name, new_field, old_id, stamp))
                elif old_id is not None:
                    choice = op.choice if t is ResolveOp and name == op.field else None  # type: ignore[union-attr]
                    append_event(conflict_resolved(stream, name, old_id, new_field, stamp, choice))
    if not work:
        return Reconciliation(state, events, outcomes)
    records = copy_mapping(records_in)
    for stream, (fields, clock_merger, receipts) in work.items():
        # The dicts are handed over, not copied: nothing else holds them after this.
        records[stream] = _tuple_new(RecordState, (stream, fields, clock_merger.result(), receipts))
    return Reconciliation(RecordsState(MappingProxyType(records)), events, outcomes)


def _check_causal(op: Op, known: Any) -> None:
    """Refuse a clock that claims writes of another node the record never accepted: such a
    counter (up to the counter limit) would make every later write of that node look
    concurrent or older, and its next tick could pass the limit and be refused for good."""
    client = op.client
    for node, n in op.clock._c.items():
        if n > known.get(node, 0) and node != client:
            raise _Reject(RejectReason.CLOCK_UNSEEN,
                          f"the clock claims {n} writes of {node[:64]!r}; the record has {known.get(node, 0)}")


@lru_cache(maxsize=1 << 16)
def _record_collection(stream: str) -> str | None:
    # Pure, and streams repeat across batches: a bounded cache saves the regex.
    if len(stream) > STREAM_MAX or not STREAM_RE.match(stream):
        return None
    return collection_of(stream)


def _validate(op: Op, config: ResolutionConfig, now_ms: int | None) -> list[Change]:
    stream = op.stream
    coll = _record_collection(stream)
    if coll is None:
        raise _Reject(RejectReason.INVALID_STREAM, "a record stream is rec/<collection>/<id>")
    # The resolved table holds exactly the accepted collections (named ones, and any
    # other valid name when there is a default collection).
    try:
        entry = config._table[coll]
    except KeyError:
        raise _Reject(RejectReason.UNKNOWN_COLLECTION, coll) from None
    if op.clock._c.get(op.client, 0) < 1:
        raise _Reject(RejectReason.INVALID_CLOCK, "the clock lacks the client's own tick")
    if type(op.base_version) is not int or op.base_version < 0:
        raise _Reject(RejectReason.INVALID_BASE_VERSION)
    if config.max_clock_entries is not None and len(op.clock._c) > config.max_clock_entries:
        raise _Reject(RejectReason.INVALID_CLOCK,
                      f"the clock names {len(op.clock._c)} nodes (limit {config.max_clock_entries})")
    top = config.max_clock_counter
    if top is not None:
        for node, n in op.clock._c.items():
            if n > top:
                raise _Reject(RejectReason.INVALID_CLOCK, f"clock counter {n} of {node[:64]!r} exceeds {top}")
    if now_ms is not None:
        skew = config.max_clock_skew_ms
        if skew is not None and op.hlc.wall_ms - now_ms > skew:
            raise _Reject(RejectReason.CLOCK_SKEW,
                          f"the op's clock is {op.hlc.wall_ms - now_ms} ms ahead of the server's (limit {skew} ms)")
        age = config.max_op_age_ms
        if age is not None and now_ms - op.hlc.wall_ms > age:
            raise _Reject(RejectReason.STALE_OP, f"{now_ms - op.hlc.wall_ms} ms old")
    if type(op) is ResolveOp:
        return [_resolve_change(op, coll, config)]
    # Plain tuples shaped like ``Change``: one is built per field per op.
    sets, deletes = op.set, op.delete
    if not sets and not deletes:
        raise _Reject(RejectReason.EMPTY_OP)
    declared = entry[0]  # the fields named in the policy: one dict get each
    changes: list = []
    for name, value in sets.items():
        rule = declared.get(name) if type(name) is str else None
        if rule is None:
            rule = config.field_rule(coll, name)
            if rule is None:
                raise _Reject(RejectReason.INVALID_FIELD, str(name)[:80])
        strategy, mf = rule
        if strategy is _MERGE:
            try:
                value = mf.validate(value)  # type: ignore[union-attr]
            except (TypeError, ValueError) as e:
                raise _Reject(RejectReason.INVALID_VALUE, f"{name}: {e}") from None
        elif not (type(value) is str or value is None or type(value) is bool):
            value = _plain_value(name, value)
        changes.append((name, strategy, value, False, mf))
    if deletes:
        if isinstance(deletes, str):
            raise _Reject(RejectReason.INVALID_OP, "delete is a sequence of field names")
        for name in dict.fromkeys(deletes):  # duplicates in the list are one delete
            rule = config.field_rule(coll, name)
            if rule is None:
                raise _Reject(RejectReason.INVALID_FIELD, str(name)[:80])
            if name in sets:
                raise _Reject(RejectReason.FIELD_SET_AND_DELETED, name)
            if rule[0] is _MERGE:
                raise _Reject(RejectReason.UNSUPPORTED_DELETE, name)
            changes.append((name, rule[0], None, True, None))
    return changes


_MERGE = Strategy.MERGE


def _resolve_change(op: ResolveOp, coll: str, config: ResolutionConfig) -> Change:
    if type(op.conflict_id) is not str or not op.conflict_id or type(op.choice) is not str:
        raise _Reject(RejectReason.INVALID_OP, "a resolution names its conflict and choice")
    rule = config.field_rule(coll, op.field)
    if rule is None:
        raise _Reject(RejectReason.INVALID_FIELD, str(op.field)[:80])
    if rule[0] is not Strategy.MANUAL:
        raise _Reject(RejectReason.NOT_MANUAL_FIELD, op.field)
    if op.deleted:
        return Change(op.field, Strategy.MANUAL, None, True)
    return Change(op.field, Strategy.MANUAL, _plain_value(op.field, op.value))


def _plain_value(name: str, value: Any) -> Any:
    try:
        return _plain(value, 0)
    except (TypeError, ValueError) as e:
        raise _Reject(RejectReason.INVALID_VALUE, f"{name}: {e}") from None


def _plain(v: Any, depth: int) -> Any:
    """A JSON-like value that survives a msgpack round trip unchanged (tuples become lists)."""
    t = type(v)
    if t in _SCALARS:
        if t is int and not _INT_MIN <= v <= _INT_MAX:
            raise ValueError("integer out of range")
        if t is float and math.isnan(v):
            # NaN != NaN: a replica could never tell that two states are equal.
            raise ValueError("NaN is not a value")
        return v
    if depth >= VALUE_DEPTH_MAX:
        raise ValueError("value nested too deeply")
    if t is list or t is tuple:
        return [_plain(x, depth + 1) for x in v]
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise TypeError("map keys are strings")
            out[k] = _plain(x, depth + 1)
        return out
    raise TypeError(f"{t.__name__} is not a record value")
