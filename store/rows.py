"""Turning envelopes into rows and rows back into envelopes; shared by every adapter.

Validation and msgpack encoding happen here, in the caller's task, before an append
joins a group commit: a bad event fails its own call and never a batch.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import msgpack

from engine.codec import pack, unpack
from engine.errors import PayloadTooLarge, ValidationError
from engine.events import (
    NO_ACTOR,
    Actor,
    AppendResult,
    NewEvent,
    RecordedEvent,
    RecordedEventSlots,
    Retention,
    StreamAppended,
    StreamWrite,
    check_stream,
    check_tenant,
    check_type,
)
from engine.hashchain import event_hash, hash_packed
from engine.ids import uuid7_many
from engine.upcasting import UpcasterRegistry

DEFAULT_MAX_PAYLOAD = 1024 * 1024

# engine.codec.pack builds a msgpack Packer (and its buffer) per call, about two thirds
# of the cost of packing a small payload; an append packs twice per event (payload and
# hashed fields). A Packer is not safe to share between threads, so each thread keeps
# its own. Same encoding as engine.codec.pack (use_bin_type), same error.
_local = threading.local()


def _pack(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(obj)  # resets its buffer when packing fails
    except (TypeError, ValueError, OverflowError):
        return pack(obj)  # raises engine.codec's UnencodablePayload
_RETENTIONS = {r.value: r for r in Retention}
_RETENTION_NAMES = {r.value: r.value for r in Retention}  # plain str values
_EMPTY: dict = {}


@dataclass(slots=True)
class PreparedEvent:
    id: str | None
    type: str
    schema: int
    actor_user: str
    actor_client: str
    clock: bytes | None
    payload: bytes
    meta: bytes | None
    retention: str


@dataclass(slots=True)
class PreparedWrite:
    stream: str
    expected_version: int | None
    events: list[PreparedEvent]


@dataclass(slots=True)
class PreparedAppend:
    tenant: str
    writes: list[PreparedWrite]
    idempotency_key: str | None
    fingerprint: bytes | None
    event_count: int


def prepare(
    tenant: str,
    writes: Sequence[StreamWrite],
    idempotency_key: str | None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> PreparedAppend:
    check_tenant(tenant)
    if not writes:
        raise ValidationError("an append needs at least one stream write")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255):
        raise ValidationError("idempotency key must be 1 to 255 characters")
    out: list[PreparedWrite] = []
    count = 0
    seen: set[str] | None = set() if len(writes) > 1 else None
    for w in writes:
        stream, expected, events = w.stream, w.expected_version, w.events
        check_stream(stream)
        if seen is not None:
            if stream in seen:
                raise ValidationError(f"stream {stream!r} appears twice in one append")
            seen.add(stream)
        if expected is not None and (not isinstance(expected, int) or expected < 0):
            raise ValidationError("expected_version must be a non-negative integer or None")
        if not events:
            raise ValidationError(f"no events for stream {stream!r}")
        out.append(PreparedWrite(stream, expected, [_prepare_event(e, max_payload) for e in events]))
        count += len(events)
    fingerprint = _fingerprint(out) if idempotency_key is not None else None
    return PreparedAppend(tenant, out, idempotency_key, fingerprint, count)


def _prepare_event(e: NewEvent, max_payload: int) -> PreparedEvent:
    if e.__class__ is not NewEvent and not isinstance(e, NewEvent):
        raise ValidationError("events must be NewEvent instances")
    check_type(e.type)
    schema = e.schema
    if not isinstance(schema, int) or not 1 <= schema <= 32767:
        raise ValidationError("schema must be an integer from 1 to 32767")
    payload = _pack(e.data)
    if len(payload) > max_payload:
        raise PayloadTooLarge(
            f"payload is {len(payload)} bytes, the limit is {max_payload}", size=len(payload), limit=max_payload
        )
    r = e.retention
    retention = _RETENTION_NAMES.get(r) if isinstance(r, str) else None  # Retention is a StrEnum
    if retention is None:
        retention = str(r)
        if retention not in _RETENTIONS:
            raise ValidationError(f"unknown retention {retention!r}")
    actor = e.actor or NO_ACTOR
    user, client = actor.user, actor.client
    if user.__class__ is not str or len(user) > 128:
        user = str(user)[:128]
    if client.__class__ is not str or len(client) > 128:
        client = str(client)[:128]
    return PreparedEvent(
        e.id, e.type, schema, user, client,
        pack(dict(e.clock)) if e.clock else None,
        payload,
        pack(dict(e.meta)) if e.meta else None,
        retention,
    )


def _fingerprint(writes: Iterable[PreparedWrite]) -> bytes:
    h = hashlib.sha256()
    for w in writes:
        h.update(pack([w.stream, w.expected_version]))
        for e in w.events:
            h.update(pack([e.type, e.schema, e.actor_user, e.actor_client, e.retention]))
            h.update(e.payload)
            h.update(e.clock or b"")
    return h.digest()


def new_event_ids(time_us: int, n: int) -> list[str]:
    """``n`` fresh UUIDv7 ids for events committed at ``time_us`` (one read of the OS's
    randomness for all of them)."""
    return uuid7_many(time_us // 1000, os.urandom(10 * n), n)


def event_values(
    tenant: str,
    stream: str,
    version: int,
    position: int,
    time_us: int,
    prev_hash: bytes,
    e: PreparedEvent,
    event_id: str,
) -> tuple:
    """An events row in WRITE_COLUMNS order, its hash chained to ``prev_hash``."""
    clock, payload, meta = e.clock, e.payload, e.meta
    h = hash_packed(prev_hash, _pack([  # engine.hashchain.chain_hash's fields
        event_id, tenant, stream, version, position, e.type, e.schema, time_us,
        e.actor_user, e.actor_client, clock or b"", payload, meta or b"", e.retention,
    ]))
    return (position, event_id, tenant, stream, version, e.type, e.schema, time_us,
            e.actor_user, e.actor_client, clock, payload, meta, e.retention, prev_hash, h)


def row_hash(row: Any) -> bytes:
    """Recompute the hash of a stored row (mapping or Row with the events columns)."""
    return event_hash(
        row["prev_hash"],
        id=row["id"],
        tenant=row["tenant"],
        stream=row["stream"],
        version=row["version"],
        position=row["position"],
        type=row["type"],
        schema=row["schema"],
        time_us=row["time_us"],
        actor_user=row["actor_user"],
        actor_client=row["actor_client"],
        clock=row["clock"] or b"",
        payload=row["payload"],
        meta=row["meta"] or b"",
        retention=row["retention"],
    )


# Column order of an events row as written (build_row's keys, in table order).
WRITE_COLUMNS = (
    "position", "id", "tenant", "stream", "version", "type", "schema", "time_us", "actor_user",
    "actor_client", "clock", "payload", "meta", "retention", "prev_hash", "hash",
)

# Column order used by every read; decode_row relies on it.
READ_COLUMNS = (
    "position", "id", "tenant", "stream", "version", "type", "schema", "time_us",
    "actor_user", "actor_client", "clock", "payload", "meta", "retention",
)


_ACTORS: dict[tuple[str, str], Actor] = {}


# The loop of decode_rows, once per set of columns a read leaves out because its WHERE
# clause binds them (a scoped log page: tenant; a stream: tenant and stream). Each
# column costs the driver about 0.15 us per row, as much as filling two fields, so
# those are not fetched; the loop takes them from its arguments instead. One source,
# compiled per shape (like engine.events._fast_init), so the shapes cannot drift apart.
_DECODE_SOURCE = """
def decode(rows, upcast, tenant, stream):
    out = []
    append = out.append
    actors = _ACTORS
    unpackb = msgpack.unpackb
    new, slots, frozen, empty, retentions = object.__new__, RecordedEventSlots, RecordedEvent, _EMPTY, _RETENTIONS
    for {targets} in rows:
        # engine.codec.unpack's options, called directly: a Python call less per column
        data = unpackb(payload, raw=False, strict_map_key=False)
        if upcast is not None:
            schema, data = upcast(type_, schema, data)
        actor = actors.get((au, ac))
        if actor is None:
            actor = Actor(au, ac)
            if len(actors) < 100_000:  # actors repeat a lot; share them, boundedly
                actors[(au, ac)] = actor
        ev = new(slots)
        ev.id = id_
        ev.tenant = tenant
        ev.stream = stream
        ev.version = version
        ev.position = position
        ev.type = type_
        ev.schema = schema
        ev.time_us = time_us
        ev.actor = actor
        ev.clock = unpackb(clock, raw=False, strict_map_key=False) if clock else empty
        ev.data = data
        ev.meta = unpackb(meta, raw=False, strict_map_key=False) if meta else empty
        ev.retention = retentions[retention]
        ev.__class__ = frozen
        append(ev)
    return out
"""
# READ_COLUMNS as the loop's variable names
_TARGETS = ("position", "id_", "tenant", "stream", "version", "type_", "schema", "time_us",
            "au", "ac", "clock", "payload", "meta", "retention")


def _compile_decoder(left_out: tuple[str, ...]):
    targets = ", ".join(t for t in _TARGETS if t not in left_out)
    ns = {"msgpack": msgpack, "Actor": Actor, "RecordedEvent": RecordedEvent,
          "RecordedEventSlots": RecordedEventSlots, "_ACTORS": _ACTORS, "_EMPTY": _EMPTY,
          "_RETENTIONS": _RETENTIONS}
    exec(_DECODE_SOURCE.format(targets=targets), ns)
    return ns["decode"]


_DECODERS = {left_out: _compile_decoder(left_out) for left_out in ((), ("tenant",), ("tenant", "stream"))}


def read_columns(left_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """READ_COLUMNS without the columns a read binds in its WHERE clause (a key of
    _DECODERS: (), ("tenant",) or ("tenant", "stream"))."""
    if left_out not in _DECODERS:
        raise ValueError(f"no decoder leaves out {left_out!r}")
    return tuple(c for c in READ_COLUMNS if c not in left_out)


def decode_rows(
    rows: Iterable[Sequence[Any]],
    upcasters: UpcasterRegistry | None = None,
    *,
    tenant: str | None = None,
    stream: str | None = None,
) -> list[RecordedEvent]:
    """Rows to events, payloads decoded (and upcast when the registry has upcasters).

    Rows are in READ_COLUMNS order, without the tenant column when ``tenant`` is given
    and without the stream column too when ``stream`` is (the read bound them in its
    WHERE clause, so every row has those values). One loop with everything it touches
    in locals: this is the read path's per-row cost, next to the driver's.

    Each event is filled in as a writable RecordedEventSlots and then re-classed as the
    frozen RecordedEvent (see engine/events.py): plain slot stores instead of one
    descriptor call per field, about half of this loop's cost before."""
    if stream is not None and tenant is None:
        raise ValueError("a stream is known only together with its tenant")
    left_out = () if tenant is None else ("tenant",) if stream is None else ("tenant", "stream")
    upcast = upcasters.upcast if upcasters else None  # an empty registry lifts nothing
    return _DECODERS[left_out](rows, upcast, tenant, stream)


def decode_row(r: Sequence[Any], upcasters: UpcasterRegistry | None = None) -> RecordedEvent:
    return decode_rows((r,), upcasters)[0]


def encode_result(result: AppendResult) -> bytes:
    return pack(
        [[[s.stream, s.first_version, s.last_version, s.first_position, s.last_position] for s in result.streams],
         list(result.event_ids)]
    )


def decode_result(blob: bytes) -> AppendResult:
    streams, ids = unpack(blob)
    return AppendResult(
        streams=tuple(StreamAppended(*s) for s in streams), event_ids=tuple(ids), duplicate=True
    )
