"""Time travel and document loading: state at any position or time, from the nearest
snapshot plus a replay of the log up to that point."""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from syncline.engine.documents import DocSnapshot, Document, SnapshotCorrupt
from syncline.engine.errors import ValidationError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter
from syncline.engine.records import MergeRegistry, RecordsFolder, RecordState

log = logging.getLogger("syncline.store.history")
DOC_SNAPSHOT_KIND = "ydoc"


async def resolve_position(store: Any, *, position: int | None = None, time_us: int | None = None) -> int:
    """``position`` as given, or the last position committed at or before ``time_us``,
    or the head when neither is given."""
    if position is not None and time_us is not None:
        raise ValidationError("give a position or a time, not both")
    if position is not None:
        if position < 0:
            raise ValidationError("position must be >= 0")
        return position
    if time_us is not None:
        return await store.position_at_time(time_us)
    return await store.head_position()


async def stream_events(
    store: Any, tenant: str, stream: str, *, after: int = 0, upto: int | None = None, batch: int = 2000
) -> AsyncIterator[list[RecordedEvent]]:
    """One stream's events with positions in (after, upto], in pages."""
    f = EventFilter(streams=(stream,))
    while True:
        page = await store.read_log(tenant, after=after, limit=batch, filter=f)
        events = [e for e in page.events if upto is None or e.position <= upto]
        if events:
            yield events
        after = page.next_after
        if not page.events or (upto is not None and after >= upto) or len(events) < len(page.events):
            return


async def save_doc_snapshot(store: Any, tenant: str, stream: str, doc: Document) -> DocSnapshot:
    snap = doc.snapshot()
    await store.save_snapshot(tenant, stream, DOC_SNAPSHOT_KIND, snap.position, snap.state, snap.checksum)
    return snap


async def load_document(
    store: Any, tenant: str, stream: str, *, position: int | None = None, time_us: int | None = None
) -> Document:
    """The document at a position or time (the head by default): nearest verified
    snapshot at or before it, then the tail. A corrupt snapshot is ignored (snapshots
    are derived data) and the document is replayed from the log instead."""
    upto = None if position is None and time_us is None else await resolve_position(
        store, position=position, time_us=time_us
    )
    snapshot = None
    row = await store.load_snapshot(tenant, stream, DOC_SNAPSHOT_KIND, at_or_before=upto)
    if row is not None:
        try:
            snapshot = DocSnapshot(row[0], bytes(row[1]), row[2]).verify()
        except SnapshotCorrupt:
            log.warning("snapshot of %s/%s at %s is corrupt; replaying the log", tenant, stream, row[0])
            snapshot = None
    tail: list[RecordedEvent] = []
    async for events in stream_events(store, tenant, stream, after=snapshot.position if snapshot else 0, upto=upto):
        tail.extend(events)
    return Document.load(snapshot, tail, doc_id=stream)


async def record_at(
    store: Any,
    tenant: str,
    stream: str,
    *,
    position: int | None = None,
    time_us: int | None = None,
    registry: MergeRegistry | None = None,
) -> RecordState:
    """A record as it was at a position or time (the head by default), replayed from its stream."""
    upto = await resolve_position(store, position=position, time_us=time_us)
    folder = RecordsFolder(registry=registry)
    async for events in stream_events(store, tenant, stream, upto=upto):
        folder.fold(events)
    return folder.state().get(stream)
