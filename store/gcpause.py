"""Pausing Python's cyclic garbage collector while a bounded, synchronous step builds data.

The one helper for this in the project: the I/O shells and the store call it around
engine steps (the engine itself never touches the collector). Some engine steps
(reconciling a batch of ops, folding a page of events) allocate
many small containers that all stay alive: the new state and the events that
describe it. Reference counting frees their temporaries; the cyclic collector has
nothing to find in them. Left running, it still walks them every few hundred
allocations and, as they survive, promotes them and rescans the older generations,
which include every state already built. Pausing it for the step removes that
walk; it runs again as soon as the step returns, so anything cyclic made meanwhile
is collected as usual.

No I/O, and the result of the step does not depend on it. The collector is
process-wide: if it was already off (the caller's choice, or another step in
progress), it is left as it was.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
