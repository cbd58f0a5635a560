"""Turning envelopes into rows and rows back into envelopes, for the store's adapters.

Validation, encoding, planning and hashing are the log kernel's (engine/logkernel.py,
pure and shared with the simulator's sync logs); this module gives it the store's
packer and id source, and holds the store's side: the exec-built row decoders.
Validation and msgpack encoding happen in the caller's task, before an append joins a
group commit: a bad event fails its own call and never a batch.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Sequence

import msgpack

from syncline.engine import logkernel
from syncline.engine.codec import pack
from syncline.engine.events import (
    Actor,
    RecordedEvent,
    Retention,
    StreamWrite,
)
from syncline.engine.ids import uuid7_many
from syncline.engine.logkernel import (  # noqa: F401  (re-exported: the store's writers use them from here)
    DEFAULT_MAX_PAYLOAD,
    WRITE_COLUMNS,
    PreparedAppend,
    PreparedEvent,
    PreparedWrite,
    decode_result,
    encode_result,
    row_hash,
)
from syncline.engine.upcasting import UpcasterRegistry

# engine.codec.pack builds a msgpack Packer (and its buffer) per call, about two thirds
# of the cost of packing a small payload; an append packs twice per event (payload and
# hashed fields). A Packer is not safe to share between threads, so each thread keeps
# its own. Same encoding as engine.codec.pack (use_bin_type), same error: the kernel's
# ``Packer`` contract.
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
_EMPTY: dict = {}


def prepare(
    tenant: str,
    writes: Sequence[StreamWrite],
    idempotency_key: str | None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> PreparedAppend:
    """``engine.logkernel.prepare`` with the store's packer."""
    return logkernel.prepare(tenant, writes, idempotency_key, max_payload, _pack)


def new_event_ids(time_us: int, n: int) -> list[str]:
    """``n`` fresh UUIDv7 ids for events committed at ``time_us`` (one read of the OS's
    randomness for all of them)."""
    return uuid7_many(time_us // 1000, os.urandom(10 * n), n)


# Column order used by every read; decode_row relies on it.
READ_COLUMNS = (
    "position", "id", "tenant", "stream", "version", "type", "schema", "time_us",
    "actor_user", "actor_client", "clock", "payload", "meta", "retention",
)


_ACTORS: dict[tuple[str, str], Actor] = {}


class RecordedEventSlots:
    """RecordedEvent's storage, writable: the same slots, in the same order, without the
    frozen ``__setattr__``. Building a frozen event costs a descriptor call per field; the
    read path decodes every event of a log read, so the decoder below fills one of these
    with plain attribute stores (a few nanoseconds each) and then re-classes it, which
    Python allows between classes with the same slots::

        ev = object.__new__(RecordedEventSlots)
        ev.id = ...  # every field of RecordedEvent, exactly once
        ev.__class__ = RecordedEvent  # frozen from here on, like any other

    It lives here, beside the exec-built decoders that are its one user (the engine only
    defines RecordedEvent). ``_check_twin`` fails the import if the two ever differ."""

    __slots__ = RecordedEvent.__slots__


def _check_twin() -> None:
    ev = object.__new__(RecordedEventSlots)
    ev.__class__ = RecordedEvent  # raises TypeError if the layouts differ


_check_twin()


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


def _compile_decoder(left_out: tuple[str, ...], trailing: tuple[str, ...] = ()):
    targets = ", ".join([t for t in _TARGETS if t not in left_out] + list(trailing))
    ns = {"msgpack": msgpack, "Actor": Actor, "RecordedEvent": RecordedEvent,
          "RecordedEventSlots": RecordedEventSlots, "_ACTORS": _ACTORS, "_EMPTY": _EMPTY,
          "_RETENTIONS": _RETENTIONS}
    exec(_DECODE_SOURCE.format(targets=targets), ns)
    return ns["decode"]


_DECODERS = {left_out: _compile_decoder(left_out) for left_out in ((), ("tenant",), ("tenant", "stream"))}
# Rows that carry the log head as one more, last column (store/read_queries.py, a log
# page read with its head in one query on PostgreSQL).
_DECODERS_HEAD = {left_out: _compile_decoder(left_out, ("_head",)) for left_out in _DECODERS}


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
    trailing_head: bool = False,
) -> list[RecordedEvent]:
    """Rows to events, payloads decoded (and upcast when the registry has upcasters).

    Rows are in READ_COLUMNS order, without the tenant column when ``tenant`` is given
    and without the stream column too when ``stream`` is (the read bound them in its
    WHERE clause, so every row has those values). One loop with everything it touches
    in locals: this is the read path's per-row cost, next to the driver's.

    Each event is filled in as a writable RecordedEventSlots and then re-classed as the
    frozen RecordedEvent (see engine/events.py): plain slot stores instead of one
    descriptor call per field, about half of this loop's cost before.

    With ``trailing_head`` each row ends with one more column (the log head), ignored."""
    if stream is not None and tenant is None:
        raise ValueError("a stream is known only together with its tenant")
    left_out = () if tenant is None else ("tenant",) if stream is None else ("tenant", "stream")
    upcast = upcasters.upcast if upcasters else None  # an empty registry lifts nothing
    return (_DECODERS_HEAD if trailing_head else _DECODERS)[left_out](rows, upcast, tenant, stream)


def decode_row(r: Sequence[Any], upcasters: UpcasterRegistry | None = None) -> RecordedEvent:
    return decode_rows((r,), upcasters)[0]
