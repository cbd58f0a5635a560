"""Per-stream statistics: event count, version, first/last position and time, types seen."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..events import RecordedEvent
from . import Projection


@dataclass(slots=True)
class StreamStat:
    events: int = 0
    version: int = 0
    first_position: int = 0
    last_position: int = 0
    last_time_us: int = 0
    types: dict[str, int] = field(default_factory=dict)


def apply_stats_event(state: dict[tuple[str, str], StreamStat], e: RecordedEvent) -> dict:
    st = state.get((e.tenant, e.stream))
    if st is None:
        st = state[(e.tenant, e.stream)] = StreamStat(first_position=e.position)
    st.events += 1
    st.version = e.version
    st.last_position = e.position
    st.last_time_us = e.time_us
    st.types[e.type] = st.types.get(e.type, 0) + 1
    return state


def apply_stats_events(state: dict[tuple[str, str], StreamStat], events: Sequence[RecordedEvent]) -> dict:
    """``apply_stats_event`` over a page, in one loop (the same result). A stream's events
    come in runs (an append is consecutive in the log): the stat is looked up once per run."""
    get = state.get
    st: StreamStat  # bound at the first event (a stream is a str)
    tenant = stream = None
    for e in events:
        if e.stream != stream or e.tenant != tenant:
            stream, tenant = e.stream, e.tenant
            key = (tenant, stream)
            found = get(key)
            if found is None:
                found = state[key] = StreamStat(first_position=e.position)
            st = found
        st.events += 1
        st.version = e.version
        st.last_position = e.position
        st.last_time_us = e.time_us
        types = st.types
        types[e.type] = types.get(e.type, 0) + 1
    return state


def stats_projection() -> Projection[dict]:
    return Projection("stats", dict, apply_stats_event, apply_many=apply_stats_events)
