"""What happened to each submitted op: the per-op answer of ``reconcile``."""
from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple


class OutcomeKind(StrEnum):
    APPLIED = "applied"  # accepted; no field was written concurrently by someone else
    MERGED = "merged"  # accepted; a concurrent write was settled by LWW or a merge function
    CONFLICT = "conflict"  # accepted; a manual field now holds concurrent versions
    DUPLICATE = "duplicate"  # the op id was seen before; ``original`` is the first answer
    REJECTED = "rejected"  # not applied; ``reason`` is a stable code


class RejectReason(StrEnum):
    INVALID_OP = "invalid_op"  # not a ClientOp/ResolveOp, or a malformed attribute
    INVALID_STREAM = "invalid_stream"  # not rec/<collection>/<id>
    UNKNOWN_COLLECTION = "unknown_collection"
    INVALID_FIELD = "invalid_field"  # bad name, or undeclared in a strict collection
    EMPTY_OP = "empty_op"  # sets and deletes nothing
    FIELD_SET_AND_DELETED = "field_set_and_deleted"
    INVALID_CLOCK = "invalid_clock"  # the vector clock lacks the client's own tick, ...
    INVALID_VALUE = "invalid_value"  # not msgpack-able, or a bad operand for a merge field
    UNSUPPORTED_DELETE = "unsupported_delete"  # merge-function fields cannot be deleted
    NOT_MANUAL_FIELD = "not_manual_field"  # a ResolveOp on a field that is not manual
    INVALID_BASE_VERSION = "invalid_base_version"
    CLOCK_SKEW = "clock_skew"  # HLC too far ahead of the server's physical clock
    STALE_OP = "stale_op"  # HLC older than the configured maximum op age
    CLOCK_UNSEEN = "clock_unseen"  # the vector clock claims writes of another node the record never had
    OUT_OF_SCOPE = "out_of_scope"  # the token's scopes do not allow writing this stream (engine/access.py)


class Outcome(NamedTuple):
    """Immutable (a NamedTuple: one is built per op, so it must be cheap)."""

    kind: OutcomeKind
    op_id: str
    stream: str = ""
    conflicts: tuple[str, ...] = ()  # open conflict ids this op takes part in
    resolved: tuple[str, ...] = ()  # conflict ids this op closed
    superseded: tuple[str, ...] = ()  # fields where this op's write was already outdated
    reason: RejectReason | None = None
    detail: str = ""
    original: Outcome | None = None  # for DUPLICATE: the first outcome of this op id

    @property
    def effective(self) -> Outcome:
        """The outcome that decided the op (the original one, for a duplicate)."""
        return self.original if self.original is not None else self

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind.value, "op": self.op_id}
        if self.stream:
            body["stream"] = self.stream
        if self.conflicts:
            body["conflicts"] = list(self.conflicts)
        if self.resolved:
            body["resolved"] = list(self.resolved)
        if self.superseded:
            body["superseded"] = list(self.superseded)
        if self.reason is not None:
            body["reason"] = self.reason.value
        if self.detail:
            body["detail"] = self.detail
        if self.original is not None:
            body["original"] = self.original.to_wire()
        return body


def rejected(op_id: str, stream: str, reason: RejectReason, detail: str = "") -> Outcome:
    return Outcome(OutcomeKind.REJECTED, op_id, stream, reason=reason, detail=detail)


def outcome_wire(outcome: Outcome, now_ms: int | None) -> dict[str, Any]:
    """``outcome.to_wire()``; a ``clock_skew`` rejection also carries the server's time
    (``server_ms``), so that the client can correct its clock and stamp the op again."""
    body = outcome.to_wire()
    if now_ms is not None and outcome.reason is RejectReason.CLOCK_SKEW:
        body["server_ms"] = now_ms
    return body
