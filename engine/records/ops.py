"""Ops a client submits against a record stream ``rec/<collection>/<id>``.

Clocks are scoped to the record: in ``clock`` the node is a client id and the
counter is how many ops that client has made on this record; an op's own client
entry is its own tick (>= 1). ``hlc`` orders writes for last-writer-wins.

For a field whose strategy is a merge function, the value under ``set`` is the
operand: an increment for ``counter``, elements to add for ``set_union``, a
candidate for ``max``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, TypedDict, final

from ..clocks import HLCTimestamp, InvalidClock, VectorClock
from ..errors import ValidationError

RECORD_PREFIX = "rec/"


@final  # (so that ``type(op) is ResolveOp`` tells mypy the other kind, too)
@dataclass(frozen=True, slots=True)
class ClientOp:
    op_id: str
    client: str
    user: str
    stream: str
    clock: VectorClock
    hlc: HLCTimestamp
    set: Mapping[str, Any] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    base_version: int = 0  # the record version (op count) the client had seen; informative

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "op",
            "op": self.op_id,
            "client": self.client,
            "user": self.user,
            "stream": self.stream,
            "vc": self.clock.to_dict(),
            "hlc": self.hlc.encode(),
            "set": dict(self.set),
            "delete": list(self.delete),
            "base": self.base_version,
        }


@final
@dataclass(frozen=True, slots=True)
class ResolveOp:
    """A person's decision on a manual conflict: a write of ``value`` to ``field``.

    Its clock must cover the versions it resolves (``Conflict.resolution`` builds
    one that does); then it supersedes all of them, on every replica, whether or
    not the replica has seen the conflict yet. ``choice`` is what the person
    picked (a version's op id, or ``"custom"``) and goes into the audit event.
    """

    op_id: str
    client: str
    user: str
    stream: str
    clock: VectorClock
    hlc: HLCTimestamp
    conflict_id: str
    field: str
    choice: str
    value: Any = None
    deleted: bool = False
    base_version: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "resolve",
            "op": self.op_id,
            "client": self.client,
            "user": self.user,
            "stream": self.stream,
            "vc": self.clock.to_dict(),
            "hlc": self.hlc.encode(),
            "conflict": self.conflict_id,
            "field": self.field,
            "choice": self.choice,
            "value": self.value,
            "deleted": self.deleted,
            "base": self.base_version,
        }


Op = ClientOp | ResolveOp


class _Common(TypedDict):
    """The fields both op kinds have (``op_from_wire`` decodes them once)."""

    op_id: str
    client: str
    user: str
    stream: str
    clock: VectorClock
    hlc: HLCTimestamp
    base_version: int


def op_from_wire(data: Any) -> Op:
    """Build an op from its wire dict; malformed input raises :class:`ValidationError`."""
    if not isinstance(data, Mapping):
        raise ValidationError("an op is a map")
    try:
        common: _Common = {
            "op_id": _str(data["op"]),
            "client": _str(data["client"]),
            "user": str(data.get("user", "")),
            "stream": _str(data["stream"]),
            "clock": VectorClock.from_dict(data.get("vc", {})),
            "hlc": HLCTimestamp.decode(data["hlc"]),
            "base_version": int(data.get("base", 0)),
        }
        if data.get("kind", "op") == "resolve":
            return ResolveOp(
                conflict_id=_str(data["conflict"]),
                field=_str(data["field"]),
                choice=str(data.get("choice", "custom")),
                value=data.get("value"),
                deleted=bool(data.get("deleted", False)),
                **common,
            )
        sets = data.get("set", {})
        deletes = data.get("delete", [])
        if not isinstance(sets, Mapping) or not isinstance(deletes, (list, tuple)):
            raise ValidationError("set is a map and delete a list")
        return ClientOp(set=dict(sets), delete=tuple(deletes), **common)
    except KeyError as e:
        raise ValidationError(f"op lacks {e.args[0]!r}") from None
    except InvalidClock as e:
        raise ValidationError(f"malformed op clock: {e.message}") from None
    except (TypeError, ValueError) as e:
        raise ValidationError(f"malformed op: {e}") from None


def _str(x: Any) -> str:
    if not isinstance(x, str) or not x:
        raise ValueError("expected a non-empty string")
    return x


def collection_of(stream: str) -> str | None:
    """``rec/<collection>/<id>`` -> collection; None for anything else."""
    if not stream.startswith(RECORD_PREFIX):
        return None
    parts = stream.split("/")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1]
