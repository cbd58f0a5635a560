"""Submitting client ops: load the records they touch, reconcile, append, answer per op.

The engine decides (``reconcile`` is pure); this service only loads state and
writes the result. Appends carry each record stream's expected version, so two
processes reconciling the same record cannot both win: the loser reloads the
record from the log and reconciles again. Duplicates are recognised by op id from
the record's receipts, which live in the log, so a resubmitted op gets its original
outcome even after a restart.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Callable, Sequence

from syncline.engine.errors import ConcurrencyError
from syncline.engine.events import StreamWrite
from syncline.engine.filters import EventFilter
from syncline.engine.records import (
    Op,
    Outcome,
    RecordsFolder,
    RecordsState,
    RejectReason,
    ResolutionConfig,
    as_stream_writes,
    outcome_wire,
    reconcile,
)

from .gcpause import collector_paused
from .instruments import reconcile_span

MAX_RETRIES = 8


class RecordsService:
    def __init__(self, store: Any, config: ResolutionConfig, *, clock_ms: Callable[[], int] | None = None,
                 max_clock_skew_ms: int | None = None, max_clock_counter: int | None = None,
                 max_clock_entries: int | None = None, causal_clocks: bool = False) -> None:
        """``clock_ms``: the server's physical time (ms since the epoch), injected. The clock
        bounds tighten ``config``'s (the smaller limit wins; see ResolutionConfig)."""
        self.store = store
        self.config = _bounded(config, max_clock_skew_ms=max_clock_skew_ms, max_clock_counter=max_clock_counter,
                               max_clock_entries=max_clock_entries, causal_clocks=causal_clocks)
        self._clock_ms = clock_ms
        # (tenant) -> state of the records this process has loaded; (tenant, stream) -> stream version
        self._states: dict[str, RecordsState] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _load(self, tenant: str, streams: set[str], *, refresh: bool = False) -> RecordsState:
        """The state of ``streams``, from this process's cache where it is current.

        One query fetches the versions of the streams not known (or all, on refresh);
        new streams (version 0) need nothing more; the others are replayed together
        with one filtered read of the log.
        """
        state = self._states.get(tenant, RecordsState())
        wanted = sorted(s for s in streams if refresh or (tenant, s) not in self._versions)
        if not wanted:
            return state
        current = await self.store.stream_versions(tenant, wanted)
        stale = [s for s in wanted if self._versions.get((tenant, s), 0) != current.get(s, 0)]
        for s in wanted:
            self._versions[(tenant, s)] = current.get(s, 0)
        if not stale:
            return state
        folder = RecordsFolder(registry=self.config.registry)
        f = EventFilter(streams=tuple(stale))
        after = 0
        while True:
            page = await self.store.read_log(tenant, after=after, limit=5000, filter=f)
            if page.events:
                folder.fold(page.events)
            if not page.events or page.next_after >= page.head:
                break
            after = page.next_after
        rebuilt = folder.state()
        records = dict(state.records)
        for s in stale:
            if s in rebuilt.records:
                records[s] = rebuilt.records[s]
            else:
                records.pop(s, None)
        state = RecordsState(records)
        self._states[tenant] = state
        return state

    async def submit(self, tenant: str, ops: Sequence[Op]) -> list[Outcome]:
        """Reconcile ``ops`` (in order) and append the result atomically; one outcome per op."""
        return (await self.submit_timed(tenant, ops))[0]

    async def submit_wire(self, tenant: str, ops: Sequence[Op]) -> list[dict[str, Any]]:
        """``submit``, answered in the wire form (a ``clock_skew`` rejection carries the
        server's time: ``server_ms``)."""
        outcomes, now_ms = await self.submit_timed(tenant, ops)
        return [outcome_wire(o, now_ms) for o in outcomes]

    async def submit_timed(self, tenant: str, ops: Sequence[Op]) -> tuple[list[Outcome], int | None]:
        """``submit``, with the server time the ops were judged at (None without a clock)."""
        if not ops:
            return [], None
        span = reconcile_span(len(ops), tenant)
        if span is None:
            return await self._submit_timed(tenant, ops)
        with span:
            return await self._submit_timed(tenant, ops)

    async def _submit_timed(self, tenant: str, ops: Sequence[Op]) -> tuple[list[Outcome], int | None]:
        streams = {op.stream for op in ops}
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:  # one reconciliation per tenant at a time in this process
            refresh = False
            for _ in range(MAX_RETRIES):
                state = await self._load(tenant, streams, refresh=refresh)
                now_ms = int(self._clock_ms()) if self._clock_ms else None
                with collector_paused():  # (see engine.records.reconcile)
                    result = reconcile(state, ops, self.config, now_ms=now_ms)
                if not refresh and any(o.reason is _UNSEEN for o in result.outcomes):
                    # The cached records may lag writes of another process that the client
                    # has seen: judge the causal check on fresh state before refusing.
                    refresh = True
                    continue
                if not result.events:
                    self._states[tenant] = result.state
                    return list(result.outcomes), now_ms
                writes = [
                    StreamWrite(w.stream, w.events, self._versions.get((tenant, w.stream), 0))
                    if w.stream.startswith("rec/") else w
                    for w in as_stream_writes(result.events)
                ]
                try:
                    appended = await self.store.append_many(tenant, writes)
                except ConcurrencyError:
                    refresh = True  # another process wrote these records: reload and retry
                    continue
                for s in appended.streams:
                    self._versions[(tenant, s.stream)] = s.last_version
                self._states[tenant] = result.state
                return list(result.outcomes), now_ms
            raise ConcurrencyError(sorted(streams)[0], None, -1)

    async def record(self, tenant: str, stream: str):
        state = await self._load(tenant, {stream}, refresh=True)
        return state.get(stream)


_UNSEEN = RejectReason.CLOCK_UNSEEN


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _bounded(config: ResolutionConfig, *, max_clock_skew_ms: int | None, max_clock_counter: int | None,
             max_clock_entries: int | None, causal_clocks: bool) -> ResolutionConfig:
    changes: dict[str, Any] = {}
    for name, value in (("max_clock_skew_ms", max_clock_skew_ms), ("max_clock_counter", max_clock_counter),
                        ("max_clock_entries", max_clock_entries)):
        bound = _tighter(getattr(config, name), value)
        if bound != getattr(config, name):
            changes[name] = bound
    if causal_clocks and not config.causal_clocks:
        changes["causal_clocks"] = True
    if not changes:
        return config
    return dataclasses.replace(config, collections=dict(getattr(config.collections, "_named", config.collections)),
                               **changes)
