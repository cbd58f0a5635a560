"""Op batches (interaction class C) for records: the wire → engine.records → store path.

Ops arrive in the order the client made them; store.records_service reconciles them
(engine.records.reconcile, pure) and appends the result atomically. Each op gets one
result, in order; a resubmitted op id gets its original outcome (``duplicate``).
"""
from __future__ import annotations

from typing import Any

from syncline.engine import access
from syncline.engine.errors import ValidationError
from syncline.engine.records import MANUAL, CollectionPolicy, FieldPolicy, ResolutionConfig, op_from_wire

from .auth import Principal
from .errors import TenantViolation

OPS_MAX = 2000


def default_resolution(manual_fields: tuple[str, ...] = ()) -> ResolutionConfig:
    """Any collection, every field last-writer-wins, except the ``collection.field`` items
    of ``manual_fields`` (``SYNCLINE_RECORDS_MANUAL_FIELDS``), settled by a person."""
    manual: dict[str, dict[str, FieldPolicy]] = {}
    for item in manual_fields:
        collection, dot, name = item.partition(".")
        if not dot or not collection or not name:
            raise ValidationError(f"SYNCLINE_RECORDS_MANUAL_FIELDS items are collection.field, not {item!r}")
        manual.setdefault(collection, {})[name] = MANUAL
    return ResolutionConfig({c: CollectionPolicy(fields=f) for c, f in manual.items()},
                            default_collection=CollectionPolicy())


async def submit_ops(gw: Any, principal: Principal, client: str, ops: Any) -> list[dict]:
    if not isinstance(ops, list) or not ops:
        raise ValidationError("ops must be a non-empty list")
    if len(ops) > OPS_MAX:
        raise ValidationError(f"at most {OPS_MAX} ops per batch")
    parsed = []
    for raw in ops:
        if isinstance(raw, dict) and raw.get("tenant") not in (None, principal.tenant):
            raise TenantViolation("ops are scoped to the token's tenant", tenant=principal.tenant)
        op = op_from_wire(raw)
        if not op.stream.startswith("rec/"):
            raise ValidationError("ops apply to record streams (rec/<collection>/<id>)")
        if op.user and op.user != principal.user:
            raise ValidationError("an op's user must be the token's user")
        access.check_write(principal, op.stream)  # token scopes: the whole batch is refused, nothing written
        parsed.append(op)
    results = await gw.records.submit_wire(principal.tenant, parsed)
    gw.metrics.events_appended.labels("ops").inc(len(parsed))
    count_rejections(gw, results)
    count_conflicts(gw, parsed, results)
    return results


def count_rejections(gw: Any, results: list) -> None:
    """``syncline_ops_rejected_total{reason}``: every refused op is counted (clock_skew...)."""
    for r in results:
        if r is not None and r.get("kind") == "rejected":
            gw.metrics.ops_rejected.labels(str(r.get("reason"))).inc()


def count_conflicts(gw: Any, ops: list, results: list) -> None:
    """``syncline_conflicts_total{strategy, outcome}``: ops that met a concurrent write.

    - ``merged``: settled by LWW or a merge function (strategy ``lww`` or ``merge``: the
      op's fields' strategy, ``merge`` when any of them has one);
    - ``superseded``: under LWW, this op's write was already outdated (strategy ``lww``);
    - ``kept``: a manual field now holds concurrent versions (strategy ``manual``);
    - ``resolved``: a person's resolution closed a manual conflict (strategy ``manual``).
    """
    conflicts = gw.metrics.conflicts
    for op, r in zip(ops, results):
        if not isinstance(r, dict):
            continue
        kind = r.get("kind")
        if kind == "conflict":
            conflicts.labels("manual", "kept").inc()
        elif kind == "merged":
            if r.get("superseded"):
                conflicts.labels("lww", "superseded").inc()
            else:
                conflicts.labels(_strategy_of(gw, op), "merged").inc()
        if kind in ("applied", "merged", "conflict") and r.get("resolved"):
            conflicts.labels("manual", "resolved").inc(len(r["resolved"]))


def _strategy_of(gw: Any, op: Any) -> str:
    """``merge`` when one of the op's fields has a merge function, else ``lww``."""
    try:
        collection = gw.records.config.collections[op.stream.split("/", 2)[1]]
    except (KeyError, IndexError, AttributeError):
        return "lww"
    for name in (*getattr(op, "set", {}), *getattr(op, "delete", ())):
        policy = collection.policy(name)
        if policy is not None and policy.strategy == "merge":
            return "merge"
    return "lww"
