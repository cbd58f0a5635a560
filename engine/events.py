"""The event envelope (docs/design.md, "The event log"): what is appended and what is read back.

``NewEvent`` is what a caller asks to append; the store assigns id (when absent),
version, position, time and the hash chain, and returns ``RecordedEvent``.
Times are integers: microseconds since the Unix epoch, UTC.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping

from .errors import InvalidEventType, InvalidStreamName, InvalidTenant

STREAM_RE = re.compile(r"^\$?[a-z][a-z0-9_-]{0,63}(/[A-Za-z0-9._:@~+=-]{1,200}){0,4}\Z")
TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}(\.[A-Za-z0-9_-]{1,64}){1,6}\Z")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
STREAM_MAX = 255
# What the store's columns hold: log positions are BIGINT (and SQLite INTEGER), stream
# versions INTEGER (int32 on PostgreSQL). Numbers from clients are bounded by these.
POSITION_MAX = (1 << 63) - 1
VERSION_MAX = (1 << 31) - 1
SYSTEM_PREFIX = "$"


def _fast_init(cls: type) -> type:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its
    descriptor. The generated one goes through ``object.__setattr__`` per field, about
    twice the cost, and these envelopes are built several times per appended or read
    event. Same parameters, defaults and default factories."""
    ns: dict[str, Any] = {"MISSING": MISSING}
    params, body = [], []
    for f in fields(cls):
        ns[f"set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            ns[f"default_{f.name}"] = f.default
            params.append(f"{f.name}=default_{f.name}")
        elif f.default_factory is not MISSING:
            ns[f"factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=MISSING")
            body.append(f"if {f.name} is MISSING: {f.name} = factory_{f.name}()")
        else:
            params.append(f.name)
        body.append(f"set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body), ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    # (mypy: assigning ``__init__`` on a class is unsound in general; this one has the
    # dataclass's own parameters, and no class using the decorator is subclassed)
    cls.__init__ = init  # type: ignore[misc]
    return cls


class Retention(StrEnum):
    STANDARD = "standard"
    CRITICAL = "critical"


@_fast_init
@dataclass(frozen=True, slots=True)
class Actor:
    user: str = ""
    client: str = ""


NO_ACTOR = Actor()


@_fast_init
@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    data: Any = None
    schema: int = 1
    actor: Actor = NO_ACTOR
    clock: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    retention: Retention = Retention.STANDARD
    id: str | None = None


@_fast_init
@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A committed event. (The store's read path builds these through a writable twin with
    the same slots, ``store/rows.py``; nothing else needs to know.)"""

    id: str
    tenant: str
    stream: str
    version: int
    position: int
    type: str
    schema: int
    time_us: int
    actor: Actor
    clock: Mapping[str, Any]
    data: Any
    meta: Mapping[str, Any]
    retention: Retention

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_us / 1_000_000, tz=timezone.utc)

    def to_wire(self) -> dict[str, Any]:
        """The event as a plain dict for JSON/msgpack wires (time as ISO 8601)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "stream": self.stream,
            "version": self.version,
            "position": self.position,
            "type": self.type,
            "schema": self.schema,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "actor": {"user": self.actor.user, "client": self.actor.client},
            "clock": dict(self.clock),
            "data": self.data,
            "meta": dict(self.meta),
            "retention": self.retention.value,
        }


@_fast_init
@dataclass(frozen=True, slots=True)
class StreamWrite:
    """Events for one stream inside a (possibly multi-stream) atomic append."""

    stream: str
    events: tuple[NewEvent, ...]
    expected_version: int | None = None  # None: any; 0: the stream must not exist yet


@_fast_init
@dataclass(frozen=True, slots=True)
class StreamAppended:
    stream: str
    first_version: int
    last_version: int
    first_position: int
    last_position: int


@_fast_init
@dataclass(frozen=True, slots=True)
class AppendResult:
    streams: tuple[StreamAppended, ...]
    event_ids: tuple[str, ...]
    duplicate: bool = False  # True when an idempotency key matched an earlier append

    @property
    def first_position(self) -> int:
        return min(s.first_position for s in self.streams)

    @property
    def last_position(self) -> int:
        return max(s.last_position for s in self.streams)


# Names already found valid. Appends check the same few tenants, streams and types over
# and over; a set lookup is a fraction of a regex match. Only exact str values are
# remembered (a subclass could compare or hash differently), and the sets are bounded.
_VALID_TENANTS: set[str] = set()
_VALID_STREAMS: set[str] = set()
_VALID_TYPES: set[str] = set()
_MAX_REMEMBERED = 50_000


def _remember(seen: set[str], name: str) -> None:
    if name.__class__ is str:
        if len(seen) >= _MAX_REMEMBERED:
            seen.clear()
        seen.add(name)


def check_tenant(tenant: str) -> str:
    if tenant.__class__ is str and tenant in _VALID_TENANTS:
        return tenant
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise InvalidTenant(f"invalid tenant id {tenant!r}", tenant=str(tenant)[:80])
    _remember(_VALID_TENANTS, tenant)
    return tenant


def check_stream(stream: str) -> str:
    if stream.__class__ is str and stream in _VALID_STREAMS:
        return stream
    if not isinstance(stream, str) or len(stream) > STREAM_MAX or not STREAM_RE.match(stream):
        raise InvalidStreamName(f"invalid stream name {str(stream)[:80]!r}", stream=str(stream)[:80])
    _remember(_VALID_STREAMS, stream)
    return stream


def check_type(type_: str) -> str:
    if type_.__class__ is str and type_ in _VALID_TYPES:
        return type_
    if not isinstance(type_, str) or not TYPE_RE.match(type_):
        raise InvalidEventType(f"invalid event type {str(type_)[:80]!r}", type=str(type_)[:80])
    _remember(_VALID_TYPES, type_)
    return type_


def is_system_stream(stream: str) -> bool:
    return stream.startswith(SYSTEM_PREFIX)


DM_PREFIX = "dm/"


def dm_stream(user: str) -> str:
    """A user's inbox: the direct messages sent to them (written by the server only)."""
    return DM_PREFIX + user


def is_dm_stream(stream: str) -> bool:
    return stream.startswith(DM_PREFIX)


def private_to_others(stream: str, user: str) -> bool:
    """Whether ``stream`` is another user's inbox (readable by its owner and admins only)."""
    return stream.startswith(DM_PREFIX) and stream != DM_PREFIX + user
