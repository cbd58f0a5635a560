"""Documents as a projection of the log, and time travel over a document's history.

:func:`apply_doc_event` is the fold ``apply(state, event) -> state`` over every
event of the log: it keeps one :class:`~engine.documents.Document` per
``(tenant, stream)`` of ``doc/`` streams and ignores everything else.

:func:`document_at` answers "what was this document at position P" from the
nearest snapshot at or below P plus a replay of the updates up to P.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .documents import CRDT_UPDATE, DOC_STREAM_PREFIX, DocSnapshot, Document
from .events import RecordedEvent


@dataclass(slots=True)
class DocsState:
    """Projection state: loaded documents and the position folded so far (the
    checkpoint). The pycrdt documents are mutable, so the fold updates in place
    and returns the same object."""

    docs: dict[tuple[str, str], Document] = field(default_factory=dict)
    position: int = 0

    def get(self, tenant: str, stream: str) -> Document | None:
        return self.docs.get((tenant, stream))


def is_doc_update(event: RecordedEvent) -> bool:
    return event.type == CRDT_UPDATE and event.stream.startswith(DOC_STREAM_PREFIX)


def apply_doc_event(state: DocsState, event: RecordedEvent) -> DocsState:
    """Fold one event. Events at or below the checkpoint are skipped, so a replay
    that overlaps the live feed does not double-count (it would be harmless for
    the CRDT, but the tail counters would lie)."""
    if event.position <= state.position:
        return state
    if is_doc_update(event):
        key = (event.tenant, event.stream)
        doc = state.docs.get(key)
        if doc is None:
            doc = state.docs[key] = Document(event.stream)
        doc.apply_update(
            event.data, position=event.position, version=event.version, time_us=event.time_us
        )
    state.position = event.position
    return state


def apply_doc_events(state: DocsState, events: Sequence[RecordedEvent]) -> DocsState:
    """``apply_doc_event`` over a page, in one loop (the same result, and the same
    checkpoint if an update fails to decode part way)."""
    docs = state.docs
    pos = state.position
    try:
        for e in events:
            p = e.position
            if p <= pos:
                continue
            if e.type == CRDT_UPDATE and e.stream.startswith(DOC_STREAM_PREFIX):
                key = (e.tenant, e.stream)
                doc = docs.get(key)
                if doc is None:
                    doc = docs[key] = Document(e.stream)
                doc.apply_update(e.data, position=p, version=e.version, time_us=e.time_us)
            pos = p
    finally:
        state.position = pos
    return state


def nearest_snapshot(snapshots: Iterable[DocSnapshot], position: int) -> DocSnapshot | None:
    best = None
    for s in snapshots:
        if s.position <= position and (best is None or s.position > best.position):
            best = s
    return best


def document_at(
    position: int,
    snapshots: Iterable[DocSnapshot],
    events: Iterable[RecordedEvent],
    *,
    doc_id: str = "",
) -> Document:
    """The document as of log ``position``: the nearest verified snapshot at or
    below it plus the ``crdt.update`` events of ``events`` in (snapshot, position].
    ``events`` are one document's stream; they may start anywhere before the
    snapshot (older ones are skipped) and may run past ``position`` (ignored)."""
    snapshot = nearest_snapshot(snapshots, position)
    return Document.load(snapshot, _until(events, position), doc_id=doc_id)


def document_at_time(
    time_us: int,
    snapshots: Iterable[DocSnapshot],
    events: Iterable[RecordedEvent],
    *,
    doc_id: str = "",
) -> Document:
    """The document as of commit time ``time_us`` (inclusive). Positions follow
    commit order, so "committed by T" is a prefix of the stream up to the last
    event with ``time_us <= T``."""
    events = list(events)
    position = 0
    for e in events:
        if e.time_us <= time_us:
            position = max(position, e.position)
    candidates = [s for s in snapshots if s.time_us <= time_us]
    return document_at(position, candidates, events, doc_id=doc_id)


def _until(events: Iterable[RecordedEvent], position: int) -> Iterable[RecordedEvent]:
    for e in events:
        if e.position <= position:
            yield e
