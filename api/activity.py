"""The projections the gateway serves from memory: activity feeds, presence history
and per-stream statistics of every tenant.

One ``store.projector.Projector`` over the whole log (all tenants; every route reads
only its own tenant's keys), rebuilt from position 0 when the gateway starts and then
following the tail, woken by the store's doorbell. Records and documents are not
folded here: the gateway serves them from the store (``RecordsService``, the document
rooms). The states are derived data: nothing is lost by a restart but the time to
fold the log again (a 200k-event SQLite log took about 120,000 events/s, reading
included, on this project's 2-core machine).

If reading the log fails (the database is down), the runner waits and goes on from
its checkpoint: a page that could not be read was not folded. If a fold fails, the
states may hold part of a page, so the runner starts again from position 0; until it
has caught up, the routes answer from the states as they were when the fold failed
(which may show part of that page), with ``caught_up`` false.
"""
from __future__ import annotations

import asyncio
from typing import Any

from syncline.engine.projections.feeds import FeedsState, feeds_projection
from syncline.engine.projections.presence import PresenceState, presence_projection
from syncline.engine.projections.stats import StreamStat, stats_projection
from syncline.store.projector import Projector

from .logging import log

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


class ActivityProjections:
    def __init__(self, store: Any, *, feed_keep: int = 1000, presence_keep: int = 1000, batch: int = 1000) -> None:
        self.projector = Projector(
            store,
            [feeds_projection(feed_keep), presence_projection(presence_keep), stats_projection()],
            all_tenants=True,
            batch=batch,
        )
        self.failures = 0
        self.restarts = 0  # from position 0, after a fold failed
        self._failed_at = -1  # the checkpoint at the last failure
        self._task: asyncio.Task | None = None
        # What the routes read while a restart folds the log again: the states as they
        # were when the fold failed, and their checkpoint.
        self._served: dict[str, Any] | None = None
        self._served_position = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="activity-projections")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        p = self.projector
        while True:
            try:
                await p.run()  # catch up, then follow the tail until cancelled
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the store's errors are typed; anything else is logged too
                # Failures in a row back off; a failure after progress starts again short.
                self.failures = 1 if p.position != self._failed_at else self.failures + 1
                self._failed_at = p.position
                delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(self.failures - 1, 10))
                # (a failed fold is a bug, or an event no fold expected: an error, not a warning)
                (log.error if p.fold_failed else log.warning)(
                    "projections.failed", error=type(e).__name__, detail=str(e)[:200],
                    failures=self.failures, retry_s=delay, fold_failed=p.fold_failed)
                if p.fold_failed:
                    if self._served is None:  # (a failure during a restart keeps the older states)
                        self._served, self._served_position = p.states, p.position
                    self.restarts += 1
                    p.reset()
                await asyncio.sleep(delay)

    # -- what the routes read -------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self.projector.caught_up.is_set()

    def _serving_old(self) -> bool:
        if self._served is not None and self.projector.caught_up.is_set():
            self._served = None  # the restart has caught up: let the old states go
        return self._served is not None

    def _state(self, name: str) -> Any:
        return self._served[name] if self._serving_old() else self.projector.states[name]

    @property
    def position(self) -> int:
        """Every event up to this position is in the states the routes read."""
        return self._served_position if self._serving_old() else self.projector.position

    def feeds(self) -> FeedsState:
        return self._state("feeds")

    def presence(self) -> PresenceState:
        return self._state("presence")

    def stream_stat(self, tenant: str, stream: str) -> StreamStat | None:
        return self._state("stats").get((tenant, stream))
