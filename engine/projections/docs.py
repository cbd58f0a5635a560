"""Documents as a projection: the pycrdt documents of every ``doc/`` stream."""
from __future__ import annotations

from typing import Sequence

from ..doc_history import DocsState, apply_doc_event
from ..documents import CRDT_UPDATE, DOC_STREAM_PREFIX, Document
from ..events import RecordedEvent
from ..filters import EventFilter
from . import Projection


def apply_doc_runs(state: DocsState, events: Sequence[RecordedEvent]) -> DocsState:
    """``doc_history.apply_doc_events`` (the same documents, and the same checkpoint if
    an update fails to decode part way), with each run of consecutive updates to one
    document applied in one ``Document.apply_events`` call: one yrs transaction per run
    instead of one per update. Keystrokes come in runs (a client sends a few at once)."""
    docs = state.docs
    pos = state.position
    # (document key, its run of updates), or (None, [other events]), in log order
    runs: list[tuple[tuple[str, str] | None, list[RecordedEvent]]] = []
    run: list[RecordedEvent] = []
    tenant = stream = None  # the current run's document (None: a run of other events, or none yet)
    for e in events:
        if e.position <= pos:
            continue
        if e.type == CRDT_UPDATE and e.stream.startswith(DOC_STREAM_PREFIX):
            if e.stream != stream or e.tenant != tenant or not run:
                tenant, stream = e.tenant, e.stream
                run = []
                runs.append(((tenant, stream), run))
        elif stream is not None or not run:
            tenant = stream = None
            run = []
            runs.append((None, run))
        run.append(e)
    try:
        for key, run in runs:
            if key is not None:
                doc = docs.get(key)
                if doc is None:
                    doc = docs[key] = Document(key[1])
                before = doc.tail_events
                try:
                    doc.apply_events(run)
                except BaseException:
                    # The checkpoint is the last update applied (each one counts in tail_events).
                    applied = doc.tail_events - before
                    if applied:
                        pos = run[applied - 1].position
                    raise
            pos = run[-1].position
    finally:
        state.position = pos
    return state


def documents_projection() -> Projection[DocsState]:
    return Projection(
        "documents",
        DocsState,
        apply_doc_event,
        EventFilter(stream_prefixes=(DOC_STREAM_PREFIX,), types=(CRDT_UPDATE,)),
        apply_doc_runs,
    )
