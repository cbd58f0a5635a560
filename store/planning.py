"""Planning a group commit: which calls succeed, and the rows they write.

Pure: given the batch, the current heads of the streams it touches and the
idempotency keys already stored, decide each call's outcome in arrival order and
build the rows. Every adapter (SQL or memory) runs the same plan, so they cannot
disagree about versions, positions, hashes or duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConcurrencyError, IdempotencyMismatch
from engine.events import AppendResult, StreamAppended
from engine.hashchain import GENESIS

from .rows import WRITE_COLUMNS, PreparedAppend, decode_result, encode_result, event_values, new_event_ids

StreamKey = tuple[str, str]  # (tenant, stream)


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


class _Ids:
    """Event ids for the calls of one batch that did not choose theirs, drawn in one go."""

    __slots__ = ("_time_us", "_ids")

    def __init__(self, time_us: int) -> None:
        self._time_us = time_us
        self._ids: list[str] = []

    def take(self, wanted: int) -> str:
        if not self._ids:
            self._ids = new_event_ids(self._time_us, max(wanted, 1))
            self._ids.reverse()  # pop() from the end hands them out in order
        return self._ids.pop()


def plan_batch(
    batch: list[PreparedAppend],
    heads: dict[StreamKey, Head],
    stored_keys: dict[tuple[str, str], tuple[bytes, bytes]],
    position: int,
    time_us: int,
) -> BatchPlan:
    """``heads`` holds every stream of the batch that exists; ``stored_keys`` maps
    (tenant, key) to (fingerprint, encoded result) for keys already committed."""
    plan = BatchPlan(outcomes=[], last_position=position)
    current = dict(heads)
    ids = _Ids(time_us)
    remaining = sum(c.event_count for c in batch)  # an upper bound on the ids to draw
    batch_keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
    for call in batch:
        key = (call.tenant, call.idempotency_key) if call.idempotency_key else None
        if key is not None:
            earlier = stored_keys.get(key) or batch_keys.get(key)
            if earlier is not None:
                fingerprint, blob = earlier
                if fingerprint != call.fingerprint:
                    plan.outcomes.append(
                        IdempotencyMismatch(
                            "this idempotency key was used for a different request", key=call.idempotency_key
                        )
                    )
                else:
                    plan.outcomes.append(decode_result(blob))
                continue
        conflict = _check_versions(call, current)
        if conflict is not None:
            plan.outcomes.append(conflict)
            continue
        result = _write_call(call, current, plan, time_us, ids, remaining)
        plan.outcomes.append(result)
        plan.tenants.add(call.tenant)
        if key is not None:
            blob = encode_result(result)
            batch_keys[key] = (call.fingerprint, blob)
            plan.new_keys.append(
                {"tenant": call.tenant, "key": call.idempotency_key, "fingerprint": call.fingerprint,
                 "result": blob, "created_us": time_us}
            )
    return plan


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
    call: PreparedAppend, current: dict[StreamKey, Head], plan: BatchPlan, time_us: int, ids: _Ids, remaining: int
) -> AppendResult:
    appended: list[StreamAppended] = []
    event_ids: list[str] = []
    values = plan.values
    tenant = call.tenant
    for w in call.writes:
        skey = (tenant, w.stream)
        head = current.get(skey) or Head(0, GENESIS, exists=False)
        version, prev = head.version, head.hash
        first_version, first_position = version + 1, plan.last_position + 1
        position = plan.last_position
        for e in w.events:
            version += 1
            position += 1
            row = event_values(tenant, w.stream, version, position, time_us, prev,
                               e, e.id or ids.take(remaining - len(values)))
            prev = row[-1]
            values.append(row)
            event_ids.append(row[1])
        plan.last_position = position
        moved = Head(version, prev)  # the stream exists once the batch commits
        current[skey] = moved
        plan.heads[skey] = moved
        appended.append(StreamAppended(w.stream, first_version, version, first_position, position))
    return AppendResult(streams=tuple(appended), event_ids=tuple(event_ids))
