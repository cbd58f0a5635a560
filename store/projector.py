"""Runs projections over the log: catch up, follow live, rebuild from position 0."""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

from syncline.engine.events import RecordedEvent
from syncline.engine.projections import Projection

from .gcpause import collector_paused


class Projector:
    """Feeds every event of one tenant (or, explicitly, of all tenants) to a set of
    projections, in log order, one page at a time. ``position`` is the checkpoint:
    every event up to it has been folded into every projection."""

    def __init__(
        self,
        store: Any,
        projections: Sequence[Projection],
        *,
        tenant: str | None = None,
        all_tenants: bool = False,
        batch: int = 1000,
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.tenant = tenant
        self.all_tenants = all_tenants
        self.batch = batch
        self.position = 0
        self.states: dict[str, Any] = {p.name: p.initial() for p in self.projections}
        self.caught_up = asyncio.Event()
        # Set when a fold raised: the page may be folded into some states and not others
        # (they are updated in place), so they are only good for a ``reset``. A failed
        # read leaves them as they were: the runner may simply go on from ``position``.
        self.fold_failed = False

    def state(self, name: str) -> Any:
        return self.states[name]

    def _fold(self, events: Sequence[RecordedEvent]) -> None:
        # The cyclic garbage collector is paused while one page is folded. The folds
        # build acyclic data (states of dicts, tuples, slots objects): reference
        # counting frees all their garbage. Left running, the collector rescans the
        # page and the growing states over and over, and promotes each page it meets
        # to the oldest generation, which brings on full collections of every state:
        # on a rebuild of 200,000 events that was about half of the time. The fold is
        # synchronous (nothing else on this event loop runs meanwhile) and the
        # collector runs again right after it, so anything cyclic made meanwhile is
        # collected as usual. (If it was already off, it is left off.)
        with collector_paused():
            try:
                for p in self.projections:
                    self.states[p.name] = p.fold(events, self.states[p.name])
            except BaseException:
                self.fold_failed = True
                raise

    async def catch_up(self, until: int | None = None) -> int:
        """Fold everything committed so far (or up to ``until``); returns the checkpoint.

        The next page is read while this one is folded: reading runs in the store's
        reader threads and the driver, folding here, so on more than one core the
        two overlap. Pages are still folded one after the other, in log order.
        """
        read = self._read_page
        pending = asyncio.ensure_future(read(self.position))
        try:
            while True:
                page = await pending
                pending = None
                events = page.events
                if until is not None:
                    events = tuple(e for e in events if e.position <= until)
                done = not page.events or (until is not None and min(page.next_after, until) >= until)
                if not done:
                    pending = asyncio.ensure_future(read(page.next_after))
                if events:
                    self._fold(events)
                self.position = page.next_after if until is None else min(page.next_after, until)
                if done:
                    return self.position
                # Let the folded page go now, not after the next read: alive through the
                # collections that reading triggers, it would be promoted to the oldest
                # generation, and enough promotions bring on a full collection.
                page = events = None
        finally:
            if pending is not None:
                pending.cancel()

    def _read_page(self, after: int) -> Any:
        return self.store.read_log(self.tenant, after=after, limit=self.batch, all_tenants=self.all_tenants)

    def reset(self) -> None:
        """Back to position 0 with empty states (``rebuild`` then folds everything again)."""
        self.position = 0
        self.states = {p.name: p.initial() for p in self.projections}
        self.caught_up.clear()
        self.fold_failed = False

    async def rebuild(self) -> int:
        self.reset()
        return await self.catch_up()

    async def run(self) -> None:
        """Catch up, then follow the live tail until cancelled."""
        await self.catch_up()
        self.caught_up.set()
        async for page in self.store.tail(
            self.tenant, after=self.position, all_tenants=self.all_tenants, batch=self.batch
        ):
            self._fold(page.events)
            self.position = page.next_after
