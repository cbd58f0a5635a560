"""What a remote bus consumer declares over the wire, checked (sans-I/O).

REST (``POST /v1/bus/consumers``) and the native WebSocket (``consume``) carry the same
subscription document; this module turns it into a :class:`ConsumerSpec` or raises a
:class:`~engine.errors.ValidationError` naming the field, so both surfaces refuse the
same things with the same codes (docs/protocol.md#bus-consumers)::

    {"group": "billing", "kind": "group", "lease_s": 30, "max_batch": 100,
     "filter": {"types": ["order.*"], "prefixes": ["orders/"], "streams": [],
                "where": [["customer.country", "eq", "DE"], ["total", "in", [1, 2]]],
                "tenant": "acme"}}

``filter.tenant`` may only name the caller's own tenant (a consumer never reads
another tenant's events): anything else is a :class:`TenantViolation`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import TenantViolation, ValidationError
from .filters import EventFilter, Predicate

KINDS = ("group", "durable", "broadcast")
GROUP_NAME = re.compile(r"^[A-Za-z0-9._:@~+=-]{1,128}$")
FILTER_KEYS = frozenset({"types", "prefixes", "streams", "where", "tenant"})
SPEC_KEYS = frozenset({"group", "kind", "filter", "lease_s", "max_batch", "ttl_s", "max_attempts", "start_at",
                       "partitions", "credits", "id", "t"})
LIST_MAX = 64  # entries of one filter list
PREDICATES_MAX = 16
VALUE_MAX_CHARS = 1024  # a predicate's value, as text


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's bounds on a subscription (settings ``SYNCLINE_BUS_CONSUMER_*``)."""

    lease_default_s: float = 30.0
    lease_max_s: float = 300.0
    batch_max: int = 1000
    ttl_default_s: float = 30.0
    ttl_max_s: float = 600.0
    attempts_max: int = 20


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    group: str
    kind: str
    filter: EventFilter | None
    lease_s: float
    max_batch: int
    ttl_s: float
    max_attempts: int
    start_at: str
    partitions: int


def _number(doc: dict, name: str, default: float, low: float, high: float) -> float:
    v = doc.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise ValidationError(f"{name} must be a number from {low:g} to {high:g}", field=name,
                              reason="out_of_range")
    return float(v)


def _integer(doc: dict, name: str, default: int, low: int, high: int) -> int:
    v = doc.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ValidationError(f"{name} must be an integer from {low} to {high}", field=name, reason="out_of_range")
    return v


def _texts(doc: dict, name: str) -> tuple[str, ...]:
    v = doc.get(name)
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > LIST_MAX or not all(isinstance(x, str) and 0 < len(x) <= 255 for x in v):
        raise ValidationError(f"filter.{name} must be a list of at most {LIST_MAX} non-empty strings",
                              field=f"filter.{name}", reason="invalid_filter")
    return tuple(v)


def _predicates(raw: Any) -> tuple[Predicate, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > PREDICATES_MAX:
        raise ValidationError(f"filter.where must be a list of at most {PREDICATES_MAX} [path, op, value]",
                              field="filter.where", reason="invalid_filter")
    out = []
    for i, p in enumerate(raw):
        if isinstance(p, dict):
            p = [p.get("path"), p.get("op"), p.get("value")]
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise ValidationError(f"filter.where[{i}] must be [path, op, value]", field="filter.where",
                                  reason="invalid_filter")
        path, op, value = p
        if not isinstance(path, str) or not 0 < len(path) <= 255 or any(not part for part in path.split(".")):
            raise ValidationError(f"filter.where[{i}]: path must be dotted field names", field="filter.where",
                                  reason="invalid_filter")
        if op not in ("eq", "in"):
            raise ValidationError(f"filter.where[{i}]: op is 'eq' or 'in'", field="filter.where",
                                  reason="invalid_filter")
        if op == "in":
            if not isinstance(value, list) or len(value) > LIST_MAX:
                raise ValidationError(f"filter.where[{i}]: 'in' needs a list of at most {LIST_MAX} values",
                                      field="filter.where", reason="invalid_filter")
            if not all(_scalar(x) for x in value):
                raise ValidationError(f"filter.where[{i}]: values are strings, numbers, booleans or null",
                                      field="filter.where", reason="invalid_filter")
            value = tuple(value)
        elif not _scalar(value):
            raise ValidationError(f"filter.where[{i}]: the value is a string, number, boolean or null",
                                  field="filter.where", reason="invalid_filter")
        out.append(Predicate(path, op, value))
    return tuple(out)


def _scalar(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, (int, float)):
        return not isinstance(v, float) or math.isfinite(v)
    return isinstance(v, str) and len(v) <= VALUE_MAX_CHARS


def parse_filter(raw: Any, tenant: str) -> EventFilter | None:
    """The wire filter as an :class:`EventFilter` (None: everything). ``tenant``: the caller's."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("filter must be an object", field="filter", reason="invalid_filter")
    unknown = set(raw) - FILTER_KEYS
    if unknown:
        raise ValidationError(f"unknown filter field {sorted(unknown)[0][:40]!r} "
                              f"(types, prefixes, streams, where, tenant)", field="filter", reason="invalid_filter")
    t = raw.get("tenant")
    if t is not None and t != tenant:
        raise TenantViolation("a consumer reads its own tenant only", tenant=tenant)
    f = EventFilter(stream_prefixes=_texts(raw, "prefixes"), streams=_texts(raw, "streams"),
                    types=_texts(raw, "types"), where=_predicates(raw.get("where")))
    return None if f.is_empty else f


def parse_spec(doc: Any, tenant: str, limits: Limits = Limits()) -> ConsumerSpec:
    """Check a subscription document (see the module docstring)."""
    if not isinstance(doc, dict):
        raise ValidationError("a subscription is an object")
    unknown = set(doc) - SPEC_KEYS
    if unknown:
        raise ValidationError(f"unknown field {sorted(unknown)[0][:40]!r}", field=sorted(unknown)[0][:40])
    kind = doc.get("kind", "group")
    if kind not in KINDS:
        raise ValidationError("kind is 'group', 'durable' or 'broadcast'", field="kind")
    group = doc.get("group")
    if kind == "broadcast" and group is None:
        group = "broadcast"
    if not isinstance(group, str) or not GROUP_NAME.match(group):
        raise ValidationError("group: 1-128 letters, digits and ._:@~+=- only", field="group")
    start_at = doc.get("start_at", "earliest" if kind != "broadcast" else "latest")
    if start_at not in ("earliest", "latest"):
        raise ValidationError("start_at is 'earliest' or 'latest'", field="start_at")
    return ConsumerSpec(
        group=group, kind=kind, filter=parse_filter(doc.get("filter"), tenant),
        lease_s=_number(doc, "lease_s", limits.lease_default_s, 0.1, limits.lease_max_s),
        max_batch=_integer(doc, "max_batch", min(100, limits.batch_max), 1, limits.batch_max),
        ttl_s=_number(doc, "ttl_s", limits.ttl_default_s, 0.5, limits.ttl_max_s),
        max_attempts=_integer(doc, "max_attempts", 3, 1, limits.attempts_max),
        start_at=start_at,
        partitions=_integer(doc, "partitions", 1 if kind == "durable" else 16, 1, 4096),
    )


def parse_ids(raw: Any, limit: int) -> list[str]:
    """Delivery ids of an ack, nack or extend: a non-empty list of at most ``limit`` strings."""
    if not isinstance(raw, list) or not 0 < len(raw) <= limit or not all(
            isinstance(x, str) and 0 < len(x) <= 128 for x in raw):
        raise ValidationError(f"ids must be a list of 1 to {limit} delivery ids", field="ids")
    return raw
