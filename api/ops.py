"""Op batches (interaction class C) for records: the wire → engine.records → store path.

Ops arrive in the order the client made them; store.records_service reconciles them
(engine.records.reconcile, pure) and appends the result atomically. Each op gets one
result, in order; a resubmitted op id gets its original outcome (``duplicate``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import ValidationError
from engine.records import LWW, CollectionPolicy, ResolutionConfig, op_from_wire
from engine.records.config import FIELD_RE

from .auth import Principal
from .errors import TenantViolation

OPS_MAX = 500


class OpenResolutionConfig(ResolutionConfig):
    """The default configuration: any collection, every field last-writer-wins, unless
    the collection is configured explicitly."""

    __slots__ = ()

    def field_rule(self, collection: str, name: str):
        rule = ResolutionConfig.field_rule(self, collection, name)
        if rule is None and collection not in self._table and type(name) is str and FIELD_RE.match(name):
            return self._resolve(LWW)
        return rule


class _AnyCollection(Mapping):
    """Every collection name is configured, with the default policy (last-writer-wins)."""

    def __getitem__(self, name: str) -> CollectionPolicy:
        if not isinstance(name, str) or not name:
            raise KeyError(name)
        return CollectionPolicy()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(name)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def default_resolution() -> ResolutionConfig:
    return OpenResolutionConfig(collections=_AnyCollection())


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
        parsed.append(op)
    outcomes = await gw.records.submit(principal.tenant, parsed)
    gw.metrics.events_appended.labels("ops").inc(len(parsed))
    return [o.to_wire() for o in outcomes]
