"""The log kernel: what every event log adapter shares, without any I/O.

One append goes through three pure steps, the same in every adapter (the SQL store's
SQLite and PostgreSQL writers, the in-memory store, the simulator's sync logs):

1. ``prepare`` validates a call and msgpack-encodes its events (in the caller's task:
   a bad event fails its own call, never a batch);
2. ``plan_batch`` decides, in arrival order, each call of a group commit: a duplicate
   (its idempotency key is known: the original result), a conflict (a wrong
   ``expected_version``: ``ConcurrencyError``, nothing written) or written (versions,
   positions, time, event ids and the hash chain assigned);
3. the adapter stores ``BatchPlan.values`` (events rows in ``WRITE_COLUMNS`` order),
   ``BatchPlan.heads`` and ``BatchPlan.new_keys``, all or nothing.

So adapters cannot disagree about versions, positions, hashes or duplicates. What
differs between them is passed in: the ``pack`` function (msgpack with
``use_bin_type``, raising ``UnencodablePayload``, like ``engine.codec.pack``: the store
passes a faster thread-local Packer with the same output) and the ``IdSource`` that
numbers events which did not choose their id (the store reads the OS's randomness;
the simulator a seeded generator).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .codec import pack as _codec_pack
from .codec import unpack
from .errors import ConcurrencyError, IdempotencyMismatch, PayloadTooLarge, ValidationError
from .events import (
    NO_ACTOR,
    AppendResult,
    NewEvent,
    Retention,
    StreamAppended,
    StreamWrite,
    check_stream,
    check_tenant,
    check_type,
)
from .hashchain import GENESIS, event_hash, hash_packed

__all__ = [
    "DEFAULT_MAX_PAYLOAD", "WRITE_COLUMNS", "Packer", "IdSource", "StreamKey",
    "PreparedEvent", "PreparedWrite", "PreparedAppend", "prepare",
    "Head", "BatchPlan", "plan_batch", "plan_one", "event_values", "row_hash", "log_digest",
    "encode_result", "decode_result", "id_source",
]

Packer = Callable[[Any], bytes]
"""Encodes a value as ``engine.codec.pack`` does (same bytes, same error)."""

IdSource = Callable[[int, int], list[str]]
"""``(time_us, n)``: ``n`` fresh event ids for events committed at ``time_us``."""

StreamKey = tuple[str, str]  # (tenant, stream)

DEFAULT_MAX_PAYLOAD = 1024 * 1024

# Column order of an events row as written (event_values' order, the table's order).
WRITE_COLUMNS = (
    "position", "id", "tenant", "stream", "version", "type", "schema", "time_us", "actor_user",
    "actor_client", "clock", "payload", "meta", "retention", "prev_hash", "hash",
)

_RETENTIONS = frozenset(r.value for r in Retention)
_RETENTION_NAMES = {r.value: r.value for r in Retention}  # plain str values


def id_source(new_id: Callable[[int], str]) -> IdSource:
    """An ``IdSource`` from a function giving one id per call from a millisecond time
    (``new_id(time_ms)``, e.g. a seeded ``uuid7``), called once per id, in event order."""

    def ids(time_us: int, n: int) -> list[str]:
        ms = time_us // 1000
        return [new_id(ms) for _ in range(n)]

    return ids


# ------------------------------------------------------------------ preparing a call


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
    missing_ids: int = 0  # events without an id of their own: the plan draws these


def prepare(
    tenant: str,
    writes: Sequence[StreamWrite],
    idempotency_key: str | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    pack: Packer = _codec_pack,
) -> PreparedAppend:
    """Validate one append call and encode its events; raises a ``ValidationError``
    (``PayloadTooLarge``, ``UnencodablePayload``, ...) for a bad call."""
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
        out.append(PreparedWrite(stream, expected, [_prepare_event(e, max_payload, pack) for e in events]))
        count += len(events)
    fingerprint = _fingerprint(out, pack) if idempotency_key is not None else None
    missing = sum(1 for w in out for e in w.events if not e.id) if count > 1 else int(not out[0].events[0].id)
    return PreparedAppend(tenant, out, idempotency_key, fingerprint, count, missing)


def _prepare_event(e: NewEvent, max_payload: int, pack: Packer) -> PreparedEvent:
    if e.__class__ is not NewEvent and not isinstance(e, NewEvent):
        raise ValidationError("events must be NewEvent instances")
    check_type(e.type)
    schema = e.schema
    if not isinstance(schema, int) or not 1 <= schema <= 32767:
        raise ValidationError("schema must be an integer from 1 to 32767")
    payload = pack(e.data)
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


def _fingerprint(writes: Iterable[PreparedWrite], pack: Packer) -> bytes:
    h = hashlib.sha256()
    for w in writes:
        h.update(pack([w.stream, w.expected_version]))
        for e in w.events:
            h.update(pack([e.type, e.schema, e.actor_user, e.actor_client, e.retention]))
            h.update(e.payload)
            h.update(e.clock or b"")
    return h.digest()


# ------------------------------------------------------------------ rows and hashes


def event_values(
    tenant: str,
    stream: str,
    version: int,
    position: int,
    time_us: int,
    prev_hash: bytes,
    e: PreparedEvent,
    event_id: str,
    pack: Packer = _codec_pack,
) -> tuple:
    """An events row in WRITE_COLUMNS order, its hash chained to ``prev_hash``
    (``engine.hashchain.chain_hash`` over the row's fields)."""
    clock, payload, meta = e.clock, e.payload, e.meta
    h = hash_packed(prev_hash, pack([  # engine.hashchain.chain_hash's fields
        event_id, tenant, stream, version, position, e.type, e.schema, time_us,
        e.actor_user, e.actor_client, clock or b"", payload, meta or b"", e.retention,
    ]))
    return (position, event_id, tenant, stream, version, e.type, e.schema, time_us,
            e.actor_user, e.actor_client, clock, payload, meta, e.retention, prev_hash, h)


def row_hash(row: Any) -> bytes:
    """Recompute the hash of a stored row (a mapping, or a Row, with the events columns)."""
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


def log_digest(rows: Iterable[tuple[int, bytes]]) -> str:
    """sha256 over (position, row hash) of every event in position order: the same
    for equal logs, whichever adapter holds them."""
    h = hashlib.sha256()
    for position, row_digest in rows:
        h.update(position.to_bytes(8, "big"))
        h.update(row_digest)
    return h.hexdigest()


def encode_result(result: AppendResult) -> bytes:
    """An append's result as stored with its idempotency key."""
    return _codec_pack(
        [[[s.stream, s.first_version, s.last_version, s.first_position, s.last_position] for s in result.streams],
         list(result.event_ids)]
    )


def decode_result(blob: bytes) -> AppendResult:
    """``encode_result``'s inverse, marked ``duplicate`` (it answers a repeated key)."""
    streams, ids = unpack(blob)
    return AppendResult(
        streams=tuple(StreamAppended(*s) for s in streams), event_ids=tuple(ids), duplicate=True
    )


# ------------------------------------------------------------------ planning a batch


@dataclass(slots=True)
class Head:
    version: int
    hash: bytes
    exists: bool = True  # False: a stream the batch creates


@dataclass(slots=True)
class BatchPlan:
    outcomes: list[AppendResult | Exception]
    values: list[tuple] = field(default_factory=list)  # events rows, in WRITE_COLUMNS order
    heads: dict[StreamKey, Head] = field(default_factory=dict)  # streams whose head moved
    new_keys: list[dict[str, Any]] = field(default_factory=list)
    tenants: set[str] = field(default_factory=set)
    last_position: int = 0
    _rows: list[dict[str, Any]] | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The events rows as dicts by column name, built on first use (writers that bind
        positionally use ``values``)."""
        if self._rows is None:
            self._rows = [dict(zip(WRITE_COLUMNS, v)) for v in self.values]
        return self._rows

    def column(self, name: str) -> list[Any]:
        """One column of the events rows, in row order."""
        i = WRITE_COLUMNS.index(name)
        return [v[i] for v in self.values]


def plan_batch(
    batch: list[PreparedAppend],
    heads: dict[StreamKey, Head],
    stored_keys: dict[tuple[str, str], tuple[bytes, bytes]],
    position: int,
    time_us: int,
    *,
    new_ids: IdSource,
    pack: Packer = _codec_pack,
) -> BatchPlan:
    """Plan a group commit at log head ``position`` and commit time ``time_us``.

    ``heads`` holds every stream of the batch that exists; ``stored_keys`` maps
    (tenant, key) to (fingerprint, encoded result) for the batch's idempotency keys
    already committed. Each outcome is an ``AppendResult`` (``duplicate=True`` for a
    known key), a ``ConcurrencyError`` or an ``IdempotencyMismatch``; only written
    calls have rows in the plan.

    Event ids the calls did not choose come from ``new_ids``, drawn in one go when the
    first is needed: as many as the calls from there on lack (an upper bound for a
    batch; exactly what a single call needs, so a seeded source is drawn once per id,
    and never for a conflict or a duplicate)."""
    outcomes: list[AppendResult | Exception] = []
    plan = BatchPlan(outcomes, [], {}, [], set(), position)
    current = dict(heads)
    pool: list[str] = []  # drawn ids, reversed: pop() hands them out in order
    # ids the calls from here on lack, at most
    missing = batch[0].missing_ids if len(batch) == 1 else sum(c.missing_ids for c in batch)
    batch_keys: dict[tuple[str, str], tuple[bytes | None, bytes]] | None = None
    for call in batch:
        idem = call.idempotency_key
        key = (call.tenant, idem) if idem else None
        if key is not None:
            earlier = stored_keys.get(key) or (batch_keys.get(key) if batch_keys else None)
            if earlier is not None:
                missing -= call.missing_ids
                fingerprint, blob = earlier
                if fingerprint != call.fingerprint:
                    outcomes.append(
                        IdempotencyMismatch("this idempotency key was used for a different request", key=idem)
                    )
                else:
                    outcomes.append(decode_result(blob))
                continue
        conflict = _check_versions(call, current)
        if conflict is not None:
            missing -= call.missing_ids
            outcomes.append(conflict)
            continue
        result = _write_call(call, current, plan, time_us, pool, new_ids, missing, pack)
        missing -= call.missing_ids
        outcomes.append(result)
        plan.tenants.add(call.tenant)
        if key is not None:
            blob = encode_result(result)
            if batch_keys is None:
                batch_keys = {}
            batch_keys[key] = (call.fingerprint, blob)
            plan.new_keys.append(
                {"tenant": call.tenant, "key": idem, "fingerprint": call.fingerprint,
                 "result": blob, "created_us": time_us}
            )
    return plan


def plan_one(
    call: PreparedAppend,
    heads: dict[StreamKey, Head],
    stored_keys: dict[tuple[str, str], tuple[bytes, bytes]],
    position: int,
    time_us: int,
    *,
    new_ids: IdSource,
    pack: Packer = _codec_pack,
) -> tuple[BatchPlan, AppendResult]:
    """``plan_batch`` for a batch of one call (an adapter without group commit): the
    plan and the call's result; its ``ConcurrencyError`` or ``IdempotencyMismatch`` is
    raised. A duplicate's result has ``duplicate=True`` and the plan writes nothing."""
    plan = plan_batch([call], heads, stored_keys, position, time_us, new_ids=new_ids, pack=pack)
    outcome = plan.outcomes[0]
    if isinstance(outcome, Exception):
        raise outcome
    return plan, outcome


def _check_versions(call: PreparedAppend, current: dict[StreamKey, Head]) -> ConcurrencyError | None:
    for w in call.writes:
        if w.expected_version is None:
            continue
        head = current.get((call.tenant, w.stream))
        actual = head.version if head else 0
        if actual != w.expected_version:
            return ConcurrencyError(w.stream, w.expected_version, actual)
    return None


def _write_call(
    call: PreparedAppend, current: dict[StreamKey, Head], plan: BatchPlan, time_us: int, pool: list[str],
    new_ids: IdSource, missing: int, pack: Packer,
) -> AppendResult:
    appended: list[StreamAppended] = []
    event_ids: list[str] = []
    values = plan.values
    tenant = call.tenant
    taken = 0
    for w in call.writes:
        stream = w.stream
        skey = (tenant, stream)
        head = current.get(skey)
        version, prev = (head.version, head.hash) if head is not None else (0, GENESIS)
        first_version, first_position = version + 1, plan.last_position + 1
        position = plan.last_position
        for e in w.events:
            version += 1
            position += 1
            event_id = e.id
            if not event_id:
                if not pool:
                    pool.extend(new_ids(time_us, max(missing - taken, 1)))
                    pool.reverse()
                event_id = pool.pop()
                taken += 1
            # event_values, inlined: this loop runs once per appended event
            clock, payload, meta, type_, schema, au, ac, retention = (
                e.clock, e.payload, e.meta, e.type, e.schema, e.actor_user, e.actor_client, e.retention)
            h = hash_packed(prev, pack([
                event_id, tenant, stream, version, position, type_, schema, time_us,
                au, ac, clock or b"", payload, meta or b"", retention,
            ]))
            values.append((position, event_id, tenant, stream, version, type_, schema, time_us,
                           au, ac, clock, payload, meta, retention, prev, h))
            prev = h
            event_ids.append(event_id)
        plan.last_position = position
        moved = Head(version, prev)  # the stream exists once the batch commits
        current[skey] = moved
        plan.heads[skey] = moved
        appended.append(StreamAppended(stream, first_version, version, first_position, position))
    return AppendResult(tuple(appended), tuple(event_ids))
