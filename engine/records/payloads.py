"""Event payloads of the records core, and their decoding for the fold.

``record.patched`` (on the record stream) — one per accepted op::

    {"op": str, "client": str, "user": str,
     "hlc": str (HLCTimestamp.encode), "vc": {client: counter}, "base": int,
     "lww": {field: value},                     (each group present only when not empty)
     "manual": {field: value},
     "merge": {field: [merge function name, operand]},
     "deleted": {field: "lww" | "manual"},      (tombstone writes)
     "resolves": {"conflict": str, "choice": str}          (a ResolveOp only),
     "outcome": {"kind": str, "conflicts": [str], "resolved": [str], "superseded": [str]}}

Field changes apply in the order lww, manual, merge, deleted; an op names a field
once, so the order does not change the result.

``conflict.detected`` (on ``$conflicts``)::

    {"conflict": str, "stream": str, "field": str, "cause": op id,
     "supersedes": str | None,          (the conflict id this one replaces, when it grew)
     "held": op id,                     (the version the field shows meanwhile)
     "versions": [{"op", "client", "user", "hlc", "vc", "value", "deleted"}]}

``conflict.resolved`` (on ``$conflicts``)::

    {"conflict": str, "stream": str, "field": str, "by": op id,
     "choice": str | None (None: an ordinary write covered every version),
     "value": Any, "deleted": bool}
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from ..clocks import _HLC_TEXT, HLCTimestamp, VectorClock
from ..events import Actor, NewEvent, Retention, StreamWrite
from .config import Strategy
from .kernel import Change
from .merges import MergeRegistry, _identity
from .outcomes import Outcome, OutcomeKind
from .state import ManualField, Stamp, Write

RECORD_PATCHED = "record.patched"
CONFLICT_DETECTED = "conflict.detected"
CONFLICT_RESOLVED = "conflict.resolved"
CONFLICTS_STREAM = "$conflicts"
SCHEMA = 1


class StreamEvent(NamedTuple):
    """An event to append, with the stream it belongs to."""

    stream: str
    event: NewEvent


def as_stream_writes(events: list[StreamEvent] | tuple[StreamEvent, ...]) -> tuple[StreamWrite, ...]:
    """Group events by stream (order kept within each stream) for one atomic append."""
    by_stream: dict[str, list[NewEvent]] = {}
    for se in events:
        by_stream.setdefault(se.stream, []).append(se.event)
    return tuple(StreamWrite(s, tuple(evs)) for s, evs in by_stream.items())


_KIND = {k: k.value for k in OutcomeKind}


def _new_outcome_body(o: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": _KIND[o.kind]}
    if o.conflicts:
        body["conflicts"] = list(o.conflicts)
    if o.resolved:
        body["resolved"] = list(o.resolved)
    if o.superseded:
        body["superseded"] = list(o.superseded)
    return body


# Outcome bodies without conflict ids repeat: ("applied", no field superseded) is most
# of them, ("applied", ["title"]) and the like most of the rest. Each distinct one is
# built once and shared by every patch that carries it (events are immutable, like
# the shared ``_NO_META``), which saves a dict and a list per op, both of which the
# garbage collector would otherwise track. Bounded: past the limit, bodies are new.
_BODIES: dict[tuple, dict[str, Any]] = {}
_BODIES_MAX = 1024


def _outcome_body(o: Outcome) -> dict[str, Any]:
    if o[3] or o[4]:  # conflict ids: particular to this op
        return _new_outcome_body(o)
    key = (o[0], o[5])
    body = _BODIES.get(key)
    if body is None:
        body = _new_outcome_body(o)
        if len(_BODIES) < _BODIES_MAX:
            _BODIES[key] = body
    return body


_MERGE = Strategy.MERGE
_NAME = {s: s.value for s in Strategy}  # plain str: cheaper than .value, and msgpack-exact
_BY_NAME = {s.value: s for s in Strategy}


def record_patched(
    stamp: Stamp,
    changes: list[Change],
    outcome: Outcome,
    vc: dict[str, int],
    base_version: int,
    resolves: tuple[str, str] | None,
    actor: Actor,
) -> NewEvent:
    # HLCTimestamp.encode, without the method call; the wall time's 12 hex digits are
    # its 6 bytes in hex (a third cheaper than %-formatting), and the logical counter
    # is usually 0. Out-of-range parts take the format itself, for the same text.
    h = stamp[3]
    logical = h[1]
    try:
        hlc = (
            h[0].to_bytes(6, "big").hex()
            + ("-%08x-" % logical if logical or type(logical) is not int else "-00000000-")
            + h[2]
        )
    except (AttributeError, OverflowError, TypeError):
        hlc = _HLC_FORMAT % h
    data: dict[str, Any] = {
        "op": stamp[0],
        "client": stamp[1],
        "user": stamp[2],
        "hlc": hlc,
        "vc": vc,
        "base": base_version,
    }
    # Fields grouped by strategy: one map per group rather than one per field.
    for name, strategy, value, deleted, mf in changes:
        if strategy is _MERGE:
            group = data.get("merge")
            if group is None:
                group = data["merge"] = {}
            # (a MERGE change always carries its function: see reconciler._validate)
            encode = mf.encode  # type: ignore[union-attr]
            group[name] = [mf.name, value if encode is _identity else encode(value)]  # type: ignore[union-attr]
        elif deleted:
            group = data.get("deleted")
            if group is None:
                group = data["deleted"] = {}
            group[name] = _NAME[strategy]
        else:
            key = _NAME[strategy]
            group = data.get(key)
            if group is None:
                group = data[key] = {}
            group[name] = value
    if resolves is not None:
        data["resolves"] = {"conflict": resolves[0], "choice": resolves[1]}
    # (_outcome_body, with its usual case inline)
    body = None if outcome[3] or outcome[4] else _BODIES.get((outcome[0], outcome[5]))
    data["outcome"] = body if body is not None else _outcome_body(outcome)
    # Critical: record state has no snapshots, so its patches must outlive the retention period.
    ev = _NEW(NewEvent)
    _set_type(ev, RECORD_PATCHED)
    _set_data(ev, data)
    _set_schema(ev, SCHEMA)
    _set_actor(ev, actor)
    _set_clock(ev, {"vc": vc, "hlc": hlc})
    _set_meta(ev, _NO_META)
    _set_retention(ev, _CRITICAL)
    _set_id(ev, None)
    return ev


# NewEvent is a frozen dataclass: its generated __init__ sets each field through
# object.__setattr__. Setting the slots through their descriptors builds the same
# event at a third of the cost (store/rows.py does the same for RecordedEvent).
_NEW = object.__new__
_set_type, _set_data, _set_schema, _set_actor, _set_clock, _set_meta, _set_retention, _set_id = (
    getattr(NewEvent, f).__set__ for f in ("type", "data", "schema", "actor", "clock", "meta", "retention", "id")
)
_CRITICAL = Retention.CRITICAL
_HLC_FORMAT = "%012x-%08x-%s"  # HLCTimestamp.encode's
_NO_META: dict = {}  # shared by every patch, never written to (events are immutable; store/rows.py does the same)


def _version_body(w: Write) -> dict[str, Any]:
    s = w.stamp
    return {
        "op": s.op_id,
        "client": s.client,
        "user": s.user,
        "hlc": s.hlc.encode(),
        "vc": s.clock.to_dict(),
        "value": w.value,
        "deleted": w.deleted,
    }


def conflict_detected(
    stream: str, name: str, field_state: ManualField, supersedes: str | None, cause: Stamp
) -> StreamEvent:
    data = {
        "conflict": field_state.conflict_id,
        "stream": stream,
        "field": name,
        "cause": cause.op_id,
        "supersedes": supersedes,
        "held": field_state.versions[0].stamp.op_id,
        "versions": [_version_body(w) for w in field_state.versions],
    }
    ev = NewEvent(
        type=CONFLICT_DETECTED,
        data=data,
        schema=SCHEMA,
        actor=Actor(cause.user, cause.client),
        retention=Retention.CRITICAL,  # decisions and their inputs are the audit trail
    )
    return StreamEvent(CONFLICTS_STREAM, ev)


def conflict_resolved(
    stream: str, name: str, old_id: str, field_state: ManualField, by: Stamp, choice: str | None
) -> StreamEvent:
    w = field_state.versions[0]
    data = {
        "conflict": old_id,
        "stream": stream,
        "field": name,
        "by": by.op_id,
        "choice": choice,
        "value": w.value,
        "deleted": w.deleted,
    }
    ev = NewEvent(
        type=CONFLICT_RESOLVED,
        data=data,
        schema=SCHEMA,
        actor=Actor(by.user, by.client),
        retention=Retention.CRITICAL,
    )
    return StreamEvent(CONFLICTS_STREAM, ev)


# ---- decoding, for the fold


def decode_patch(
    stream: str, data: Mapping[str, Any], registry: MergeRegistry
) -> tuple[Stamp, list[Change], Outcome]:
    stamp, changes, o = decode_patch_body(data, registry)
    kind = _KIND_BY_NAME.get(o["kind"])
    if kind is None:
        kind = OutcomeKind(o["kind"])  # raises ValueError, as for any unknown kind
    if len(o) == 1:
        outcome = _tuple_new(Outcome, (kind, stamp[0], stream, (), (), (), None, "", None))
    else:
        outcome = Outcome(
            kind,
            stamp[0],
            stream,
            tuple(o.get("conflicts", ())),
            tuple(o.get("resolved", ())),
            tuple(o.get("superseded", ())),
        )
    return stamp, changes, outcome


def decode_patch_body(data: Mapping[str, Any], registry: MergeRegistry) -> tuple[Stamp, list, Mapping[str, Any]]:
    """The stamp and changes of a patch, and its outcome body as it is (``decode_patch``
    makes the Outcome of it; the fold keeps only its parts, see fold.Receipts)."""
    # HLCTimestamp.decode's usual case inline (the same checks: its pattern, then a short
    # ASCII node); anything else goes through decode itself, which raises when it must.
    op_id, client, user = data["op"], data["client"], data["user"]
    text = data["hlc"]
    m = _HLC_FULLMATCH(text) if type(text) is str else None
    if m is not None:
        wall, logical, node = m.groups()
        if len(node) <= 64 and node.isascii():
            hlc = _tuple_new(HLCTimestamp, (int(wall, 16), int(logical, 16), node))
        else:
            hlc = HLCTimestamp.decode(text)
    else:
        hlc = HLCTimestamp.decode(text)
    stamp = _tuple_new(Stamp, (op_id, client, user, hlc, _clock_from_dict(data["vc"])))
    # Plain tuples shaped like ``Change``, as the reconciler builds them.
    changes: list = []
    group = data.get("lww")
    if group:
        for name, value in group.items():
            changes.append((name, _LWW, value, False, None))
    group = data.get("manual")
    if group:
        for name, value in group.items():
            changes.append((name, _MANUAL, value, False, None))
    group = data.get("merge")
    if group:
        fns = registry._fns  # (registry.get without its frame; it raises for an unknown name)
        for name, (fn, operand) in group.items():
            mf = fns.get(fn)
            if mf is None:
                mf = registry.get(fn)
            changes.append((name, _MERGE, mf.validate(operand), False, mf))
    group = data.get("deleted")
    if group:
        for name, strategy in group.items():
            changes.append((name, _BY_NAME[strategy], None, True, None))
    return stamp, changes, data["outcome"]


_HLC_FULLMATCH = _HLC_TEXT.fullmatch
_clock_from_dict = VectorClock.from_dict


_tuple_new = tuple.__new__
_LWW = Strategy.LWW
_MANUAL = Strategy.MANUAL
_KIND_BY_NAME = {k.value: k for k in OutcomeKind}


# ---- a bounded cache of decoded patches, for many replicas in one process
#
# A process that runs many client replicas (the simulator; a service holding a session per
# user) folds the same event once per replica. Decoding it once is enough: entries are
# looked up by (tenant, position) and used only when the event is the same one (the very
# same data object, or an equal one) decoded with the same registry for the same stream, so
# the cache never changes a result. What it returns is immutable (stamp, a tuple of
# changes, outcome): a value decoded for one replica may be folded into another's state
# only when every written value is an immutable scalar; otherwise only a caller passing
# the very same data object (which already shares those values) gets the cached entry.

PATCH_CACHE_SIZE = 8_192
_patch_cache: dict[tuple[str, int], tuple] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _scalars_only(data: Mapping[str, Any]) -> bool:
    for key in ("lww", "manual"):
        group = data.get(key)
        if group:
            for value in group.values():
                if type(value) not in _SCALARS:
                    return False
    return True


def _same_types(a: Any, b: Any) -> bool:
    """For two values already known equal (``==``): whether they are also alike leaf by
    leaf (``1``, ``1.0`` and ``True`` are equal, ``0.0`` and ``-0.0`` too, yet decode apart)."""
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        for k, v in a.items():
            if not _same_types(v, b[k]):
                return False
        return True
    if ta is list or ta is tuple:
        return all(_same_types(x, y) for x, y in zip(a, b))
    if ta is float:
        return repr(a) == repr(b)  # the sign of a zero
    return True


def decode_patch_cached(
    tenant: str, position: int, stream: str, data: Mapping[str, Any], registry: MergeRegistry
) -> tuple[Stamp, tuple, Outcome]:
    """``decode_patch`` through the bounded (tenant, position) cache (same result, immutable)."""
    key = (tenant, position)
    hit = _patch_cache.get(key)
    if hit is not None:
        cdata, creg, cstream, decoded, shareable = hit
        if creg is registry and cstream == stream and (
            cdata is data or (shareable and cdata == data and _same_types(cdata, data))
        ):
            return decoded
    stamp, changes, outcome = decode_patch(stream, data, registry)
    decoded = (stamp, tuple(changes), outcome)
    if hit is None and len(_patch_cache) >= PATCH_CACHE_SIZE:
        del _patch_cache[next(iter(_patch_cache))]  # the oldest entry
    _patch_cache[key] = (data, registry, stream, decoded, _scalars_only(data))
    return decoded


def clear_patch_cache() -> None:
    _patch_cache.clear()
