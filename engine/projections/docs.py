"""Documents as a projection: the pycrdt documents of every ``doc/`` stream."""
from __future__ import annotations

from ..doc_history import DocsState, apply_doc_event, apply_doc_events
from ..documents import CRDT_UPDATE, DOC_STREAM_PREFIX
from ..filters import EventFilter
from . import Projection


def documents_projection() -> Projection[DocsState]:
    return Projection(
        "documents",
        DocsState,
        apply_doc_event,
        EventFilter(stream_prefixes=(DOC_STREAM_PREFIX,), types=(CRDT_UPDATE,)),
        apply_doc_events,
    )
