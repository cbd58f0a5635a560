"""Housekeeping jobs ``syncline serve`` runs periodically: document snapshots, then pruning."""
from __future__ import annotations

import logging
from typing import Any

from engine.ports import PruneReport

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


async def prune_job(store: Any, *, retention_s: float, respect_checkpoints: bool = True) -> PruneReport:
    """Snapshot documents first, so their expired updates become prunable, then prune."""
    snaps = await snapshot_documents(store)
    report = await store.prune(retention_s=retention_s, respect_checkpoints=respect_checkpoints)
    log.info("prune: %d snapshots, %d events deleted from %d streams (%d held back by checkpoints)",
             snaps, report.events_deleted, report.streams_touched, report.held_back_by_checkpoint)
    return report
