"""Incremental sync over the log: deltas with continuation cursors, and consistent
snapshots of a set of streams at one position (with checksum, chunkable)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from syncline.engine.documents import CRDT_UPDATE, Document
from syncline.engine.errors import ValidationError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter
from syncline.engine.records import RECORD_PATCHED, MergeRegistry, RecordsFolder, record_snapshot
from syncline.engine.syncdata import decode_cursor, encode_cursor, snapshot_checksum

MAX_SELECTION = 256


@dataclass(frozen=True, slots=True)
class Delta:
    events: tuple[RecordedEvent, ...]
    cursor: str  # pass back to continue
    next_after: int
    head: int
    done: bool  # True when the batch reached the head


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    position: int  # the version of the snapshot: ask for deltas after it
    content: dict[str, Any]  # stream -> state
    checksum: str


def selection(streams=(), prefixes=()) -> EventFilter:
    streams, prefixes = tuple(streams), tuple(prefixes)
    if not streams and not prefixes:
        raise ValidationError("name at least one stream or stream prefix")
    if len(streams) + len(prefixes) > MAX_SELECTION:
        raise ValidationError(f"at most {MAX_SELECTION} streams and prefixes per request")
    return EventFilter(stream_prefixes=prefixes, streams=streams)


async def delta(
    store: Any,
    tenant: str,
    *,
    streams=(),
    prefixes=(),
    after: int | None = None,
    cursor: str | None = None,
    limit: int = 500,
) -> Delta:
    """Everything after a position (or a cursor) for a selection of streams, one batch."""
    f = selection(streams, prefixes)
    if cursor is not None:
        after = decode_cursor(cursor, f)
    page = await store.read_log(tenant, after=after or 0, limit=limit, filter=f)
    return Delta(page.events, encode_cursor(page.next_after, f), page.next_after, page.head,
                 page.next_after >= page.head)


async def state_snapshot(
    store: Any,
    tenant: str,
    *,
    streams=(),
    prefixes=(),
    at: int | None = None,
    registry: MergeRegistry | None = None,
    readable: Callable[[str], bool] | None = None,
) -> StateSnapshot:
    """The state of every selected stream at one position (the head by default).

    ``rec/`` streams give their field values, field state, version and open conflicts; ``doc/``
    streams their full Yjs state; other streams their events. Everything folded is at
    or below ``position``, so a client may continue with a delta after it. With
    ``readable``, streams it refuses are left out (engine/access.py: what the caller may read).
    """
    f = selection(streams, prefixes)
    position = at if at is not None else await store.head_position()
    folder = RecordsFolder(registry=registry)  # one working copy per record across pages
    docs: dict[str, Document] = {}
    others: dict[str, list] = {}
    versions: dict[str, int] = {}
    after = 0
    while after < position:
        page = await store.read_log(tenant, after=after, limit=2000, filter=f)
        in_range = events = [e for e in page.events if e.position <= position]
        if readable is not None:
            events = [e for e in events if readable(e.stream)]
        recs = [e for e in events if e.stream.startswith("rec/") and e.type == RECORD_PATCHED]
        if recs:
            folder.fold(recs)
        for e in events:
            versions[e.stream] = e.version
            if e.stream.startswith("doc/") and e.type == CRDT_UPDATE:
                doc = docs.get(e.stream)
                if doc is None:
                    doc = docs[e.stream] = Document(e.stream)
                doc.apply_update(e.data, position=e.position, version=e.version, time_us=e.time_us)
            elif not e.stream.startswith(("rec/", "doc/")):
                others.setdefault(e.stream, []).append(e.to_wire())
        if not page.events or len(in_range) < len(page.events):
            break
        after = page.next_after
    content: dict[str, Any] = {}
    records = folder.state()
    for stream, rec in records.records.items():
        # Values for simple clients, and the field state (stamps, clocks, accumulators)
        # that a replica needs to keep merging exactly (engine/records/snapshots.py).
        content[stream] = record_snapshot(rec, versions.get(stream, 0), registry)
    for stream, doc in docs.items():
        content[stream] = {"kind": "ydoc", "version": versions[stream], "state": doc.encode_state()}
    for stream, evs in others.items():
        content[stream] = {"kind": "events", "version": versions[stream], "events": evs}
    return StateSnapshot(position, content, snapshot_checksum(position, content))
