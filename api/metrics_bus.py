"""Per-group event bus figures in /metrics (docs/bus.md#metrics).

Families (every one labelled by the group's ``tenant`` scope and ``group``, since two
tenants may each have a group of the same name):

- ``syncline_bus_published_total``: events appended to the log, all tenants (the log
  head: positions are gapless and never reused, so it only grows);
- ``syncline_bus_consumed_total{tenant,group}``: events the group's handlers acked, in
  every process (``bus_partitions.consumed``, added to with each checkpoint write);
- ``syncline_consumer_lag_events{tenant,group}``: the log head minus the group's lowest
  partition checkpoint, in log positions. An upper bound on what the group still has to
  handle: other tenants' events and events its filter skips count too, and so does
  the work of partitions ahead of the slowest one;
- ``syncline_dead_letter_entries{tenant,group,status}``: dead letters by status;
- ``syncline_bus_processing_seconds{tenant,group}``: handler time per handler call (one
  event, or one batch for a batched handler) of the members running in THIS process.

The store figures are read by a background task every ``interval_s`` (a handful of
aggregate queries, at most ``max_groups`` groups: store/bus/groups.py bus_figures) and
served from that snapshot, so a scrape never waits on the database and costs the same
however often it comes. A failed refresh keeps the last snapshot and is counted in
``syncline_bus_metrics_refresh_failures_total``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from syncline.bus import observe

log = logging.getLogger("syncline.bus.metrics")


class BusMetrics:
    def __init__(self, registry: CollectorRegistry, store: Any, *, interval_s: float = 5.0,
                 max_groups: int = 1000) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_groups = max_groups
        self.snapshot: dict[str, Any] | None = None
        self.refresh_failures = 0
        self.processing = Histogram(
            "syncline_bus_processing_seconds", "Handler time per call (an event or a batch), members in this process",
            ["tenant", "group"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        registry.register(self)
        self._task: asyncio.Task | None = None

    def _observe(self, scope: str, group: str, seconds: float) -> None:
        self.processing.labels(scope, group).observe(seconds)

    async def start(self) -> None:
        observe.OBSERVERS.append(self._observe)
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bus-metrics")

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            observe.OBSERVERS.remove(self._observe)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        from syncline.store.bus import bus_figures

        if not hasattr(self.store, "engines"):  # the in-memory store has no bus tables
            return
        try:
            self.snapshot = await bus_figures(self.store, self.max_groups)
        except Exception as e:  # the database blinked: keep the last figures, count it
            self.refresh_failures += 1
            log.warning("bus metrics refresh failed: %s", type(e).__name__)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    def collect(self):  # prometheus_client's collector protocol, at scrape time
        snap = self.snapshot or {"head": 0, "groups": [], "groups_left_out": 0}
        published = CounterMetricFamily("syncline_bus_published", "Events appended to the log (the log head)")
        published.add_metric([], snap["head"])
        consumed = CounterMetricFamily("syncline_bus_consumed", "Events a consumer group's handlers acked",
                                       labels=["tenant", "group"])
        lag = GaugeMetricFamily("syncline_consumer_lag_events",
                                "Log head minus the group's lowest partition checkpoint (positions; an upper bound)",
                                labels=["tenant", "group"])
        dead = GaugeMetricFamily("syncline_dead_letter_entries", "Dead letters by status",
                                 labels=["tenant", "group", "status"])
        for g in snap["groups"]:
            consumed.add_metric([g["scope"], g["group"]], g["consumed"])
            lag.add_metric([g["scope"], g["group"]], g["lag"])
            for status, n in sorted(g["dead_letters"].items()):
                dead.add_metric([g["scope"], g["group"], status], n)
        left_out = GaugeMetricFamily("syncline_bus_metrics_groups_left_out",
                                     "Groups past the metrics' max_groups, not exported one by one")
        left_out.add_metric([], snap["groups_left_out"])
        failures = CounterMetricFamily("syncline_bus_metrics_refresh_failures",
                                       "Failed reads of the bus figures (the last snapshot was served)")
        failures.add_metric([], self.refresh_failures)
        yield from (published, consumed, lag, dead, left_out, failures)
