"""The sync server's log (``engine.sync_server.SyncLog``) in memory: the simulator's log.

The peer of store/sqlite_sync_log.SqliteSyncLog and of the event store: every append
is prepared and planned by the log kernel (engine/logkernel.py), with the store's
packer, so versions, positions, commit times, rows, hashes, idempotency keys and
conflicts are exactly what the store would write for the same calls::

    log = MemorySyncLog(new_id)          # new_id(time_ms) -> str: a seeded run is reproducible
    events = log.append("acme", [StreamWrite("x/1", (NewEvent("t.e", {}),), 0)], now_us,
                        idempotency_key="req-1")

- a wrong ``expected_version`` raises ``ConcurrencyError`` (code ``version_conflict``)
  and writes nothing;
- a repeated idempotency key returns the events the first append recorded and writes
  nothing (a different request under the same key raises ``IdempotencyMismatch``);
- ``log_hash()`` is equal for equal logs, whichever adapter holds them.
"""
from __future__ import annotations

import bisect
from typing import Callable, Iterator, Sequence

from syncline.engine.events import RecordedEvent, StreamWrite
from syncline.engine.logkernel import Head, IdSource, StreamKey, id_source, log_digest, plan_one

from .rows import DEFAULT_MAX_PAYLOAD, _pack, decode_rows, new_event_ids, prepare

_READ_WIDTH = 14  # a planned row's first columns are READ_COLUMNS (decode_rows' input)

__all__ = ["MemorySyncLog"]


class MemorySyncLog:
    """The in-memory adapter of ``SyncLog``: same rows, same hashes as the store."""

    def __init__(self, new_id: Callable[[int], str] | None = None, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        """``new_id(time_ms)`` numbers the events that did not choose their id, one call
        per id in event order; by default, fresh UUIDv7s from the OS's randomness."""
        self._new_ids: IdSource = new_event_ids if new_id is None else id_source(new_id)
        self._max_payload = max_payload
        self._events: list[RecordedEvent] = []  # position p at index p - 1
        self._hashes: list[bytes] = []  # parallel to _events
        self._by_tenant: dict[str, tuple[list[int], list[RecordedEvent]]] = {}
        self._heads: dict[StreamKey, Head] = {}
        self._keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}  # (tenant, key) -> (fingerprint, result)
        self._time_us = 0

    def append(
        self, tenant: str, writes: Sequence[StreamWrite], time_us: int, *, idempotency_key: str | None = None
    ) -> list[RecordedEvent]:
        """Atomically append; the recorded events in position order (for a repeated
        idempotency key, the first append's, and nothing is written)."""
        call = prepare(tenant, writes, idempotency_key, self._max_payload)
        known = self._heads
        heads: dict[StreamKey, Head] = {}
        for w in call.writes:
            key = (tenant, w.stream)
            h = known.get(key)
            if h is not None:
                heads[key] = h
        stored: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        if idempotency_key is not None:
            k = self._keys.get((tenant, idempotency_key))
            if k is not None:
                stored[(tenant, idempotency_key)] = k
        time_us = max(time_us, self._time_us)  # commit times never go back, as in the store
        plan, result = plan_one(call, heads, stored, len(self._events), time_us, new_ids=self._new_ids, pack=_pack)
        if result.duplicate:
            return self._events[result.first_position - 1:result.last_position]
        # Everything is built before anything becomes visible: all or nothing.
        values = plan.values
        recorded = decode_rows([v[:_READ_WIDTH] for v in values])
        known.update(plan.heads)
        for k in plan.new_keys:
            self._keys[(k["tenant"], k["key"])] = (k["fingerprint"], k["result"])
        self._time_us = time_us
        self._events.extend(recorded)
        self._hashes.extend(v[-1] for v in values)
        positions, events = self._by_tenant.setdefault(tenant, ([], []))
        positions.extend(ev.position for ev in recorded)
        events.extend(recorded)
        return recorded

    def read(self, tenant: str, after: int, limit: int) -> list[RecordedEvent]:
        entry = self._by_tenant.get(tenant)
        if entry is None:
            return []
        i = bisect.bisect_right(entry[0], after)
        return entry[1][i:i + limit]

    def count_after(self, tenant: str, after: int) -> int:
        entry = self._by_tenant.get(tenant)
        return 0 if entry is None else len(entry[0]) - bisect.bisect_right(entry[0], after)

    def head(self) -> int:
        return len(self._events)

    def replay(self) -> Iterator[RecordedEvent]:
        return iter(list(self._events))

    def log_hash(self) -> str:
        return log_digest(zip(range(1, len(self._hashes) + 1), self._hashes))

    def close(self) -> None:
        pass
