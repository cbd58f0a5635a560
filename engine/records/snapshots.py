"""Record state in snapshots: the field state itself, not only the values.

A snapshot that carried only values would lose what merging needs: the stamp
(HLC, author) and clock of each LWW write, the concurrent versions of a manual
field, the accumulator and clock of a merge field. A replica that loaded such a
snapshot lets a late write the server had superseded win, cannot detect a manual
conflict against a pre-snapshot write, and holds merge accumulators in their wire
form (a set as a list). So a record's snapshot body carries, next to ``values``
(kept for simple clients), ``state``: the encoded ``RecordState`` data (fields and
clock) that ``decode_record_state`` turns back into an equal ``RecordState``::

    {"kind": "record", "version": int, "values": {field: value},
     "conflicts": [conflict id], "state": {"vc": {client: n}, "fields": {field: F}}}

    F = ["lww", stamp, value, deleted, vc]
      | ["manual", [[stamp, value, deleted], ...], vc, conflict id | None]
      | ["merge", function name, vc, stamp]            (no operand yet)
      | ["merge", function name, vc, stamp, encoded accumulator]
    stamp = [op id, client, user, hlc (HLCTimestamp.encode), vc]

Receipts (op id -> outcome) are left out: they are each replica's own memory and
grow with every op, while a snapshot should stay the size of the data.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from ..clocks import HLCTimestamp, VectorClock
from ..errors import ValidationError
from .merges import NO_INITIAL, MergeRegistry
from .state import LwwField, ManualField, MergeField, RecordState, Stamp, Write

_BUILTINS = MergeRegistry.with_builtins()


class InvalidRecordState(ValidationError):
    code = "invalid_record_state"


def _stamp(s: Stamp) -> list:
    return [s.op_id, s.client, s.user, s.hlc.encode(), s.clock.to_dict()]


def encode_record_state(rec: RecordState, registry: MergeRegistry | None = None) -> dict[str, Any]:
    reg = registry if registry is not None else _BUILTINS
    fields: dict[str, list] = {}
    for name, f in rec.fields.items():
        if isinstance(f, LwwField):  # (the field types are never subclassed)
            fields[name] = ["lww", _stamp(f.stamp), f.value, f.deleted, f.clock.to_dict()]
        elif isinstance(f, ManualField):
            fields[name] = ["manual", [[_stamp(w.stamp), w.value, w.deleted] for w in f.versions],
                            f.clock.to_dict(), f.conflict_id]
        else:
            body = ["merge", f.merge, f.clock.to_dict(), _stamp(f.last)]
            if f.acc is not NO_INITIAL:
                body.append(reg.get(f.merge).encode(f.acc))
            fields[name] = body
    return {"vc": rec.clock.to_dict(), "fields": fields}


def wire_values(rec: RecordState, registry: MergeRegistry | None = None) -> dict[str, Any]:
    """``rec.values()`` with merge accumulators in their wire form (a set as a sorted list)."""
    reg = registry if registry is not None else _BUILTINS
    values = rec.values()
    for name, f in rec.fields.items():
        if type(f) is MergeField and name in values:
            values[name] = reg.get(f.merge).encode(values[name])
    return values


def record_snapshot(rec: RecordState, version: int, registry: MergeRegistry | None = None) -> dict[str, Any]:
    """The snapshot body of one record (the shape every server sends)."""
    return {
        "kind": "record",
        "version": version,
        "values": wire_values(rec, registry),
        "conflicts": sorted(c.id for c in rec.conflicts()),
        "state": encode_record_state(rec, registry),
    }


def _decode_stamp(s: Any) -> Stamp:
    op_id, client, user, hlc, vc = s
    return Stamp(op_id, client, user, HLCTimestamp.decode(hlc), VectorClock.from_dict(vc))


def decode_record_state(stream: str, data: Mapping[str, Any], registry: MergeRegistry | None = None
                        ) -> RecordState:
    """``encode_record_state`` inverted (receipts empty). Raises ``InvalidRecordState``."""
    reg = registry if registry is not None else _BUILTINS
    try:
        fields: dict[str, Any] = {}
        for name, f in data["fields"].items():
            kind = f[0]
            if kind == "lww":
                fields[name] = LwwField(_decode_stamp(f[1]), f[2], bool(f[3]), VectorClock.from_dict(f[4]))
            elif kind == "manual":
                versions = tuple(Write(_decode_stamp(w[0]), w[1], bool(w[2])) for w in f[1])
                if not versions:
                    raise ValueError("a manual field without versions")
                fields[name] = ManualField(versions, VectorClock.from_dict(f[2]), f[3])
            elif kind == "merge":
                mf = reg.get(f[1])
                acc = mf.validate(f[4]) if len(f) > 4 else NO_INITIAL
                fields[name] = MergeField(mf.name, acc, VectorClock.from_dict(f[2]), _decode_stamp(f[3]))
            else:
                raise ValueError(f"unknown field kind {kind!r}")
        return RecordState(stream, MappingProxyType(fields), VectorClock.from_dict(data["vc"]))
    except InvalidRecordState:
        raise
    except Exception as e:  # a malformed body: our error, whatever the shape was
        raise InvalidRecordState(f"record state of {stream!r} does not decode: {type(e).__name__}: {e}") from e


__all__ = ["InvalidRecordState", "decode_record_state", "encode_record_state", "record_snapshot", "wire_values"]
