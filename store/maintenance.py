"""Housekeeping jobs ``syncline serve`` runs periodically: document snapshots, then pruning."""
from __future__ import annotations

import logging
import time
from typing import Any

from syncline.engine.ports import PruneReport

from .bus import forget_processed
from .history import load_document, save_doc_snapshot

log = logging.getLogger("syncline.store.maintenance")


async def snapshot_documents(store: Any, *, min_tail_events: int = 1) -> int:
    """Snapshot every document whose tail (updates after its latest snapshot) has at
    least ``min_tail_events`` updates. Returns how many snapshots were written."""
    written = 0
    for tenant in await store.list_tenants():
        for stream, _version in await store.list_streams(tenant, prefix="doc/"):
            doc = await load_document(store, tenant, stream)
            if doc.tail_events >= min_tail_events:
                await save_doc_snapshot(store, tenant, stream, doc)
                written += 1
    return written


async def prune_job(
    store: Any, *, retention_s: float, respect_checkpoints: bool = True, now_us: int | None = None
) -> PruneReport:
    """Snapshot documents first, so their expired updates become prunable, then prune the
    log, then the bus's processed event ids older than the same retention period."""
    snaps = await snapshot_documents(store)
    report = await store.prune(retention_s=retention_s, respect_checkpoints=respect_checkpoints, now_us=now_us)
    forgotten = await prune_bus_processed(store, retention_s=retention_s, now_us=now_us)
    # (a standard-library logger: the service renders it as one JSON line with these fields)
    log.info("prune.finished", extra={"snapshots": snaps, "events_deleted": report.events_deleted,
                                      "streams_touched": report.streams_touched,
                                      "held_back_by_checkpoint": report.held_back_by_checkpoint,
                                      "bus_ids_forgotten": forgotten})
    return report


async def prune_bus_processed(store: Any, *, retention_s: float, now_us: int | None = None) -> int:
    """Forget idempotent consumers' processed event ids (bus_processed) older than the
    retention period. An id is only needed while its event can still be delivered again
    (a redelivery after a crash, a requeued dead letter); past the retention period the
    event itself is prunable, so the record has outlived its use. The in-memory store
    hosts no bus: nothing to do there."""
    if getattr(store, "engines", None) is None:
        return 0
    now = now_us if now_us is not None else time.time_ns() // 1000
    return await forget_processed(store, older_than_us=now - int(retention_s * 1_000_000))
