"""Where members of this process report handler time, for /metrics (api/metrics_bus.py).

A member calls ``handler_time(scope, group, seconds)`` after each handler call (one
event, or one batch for a batched handler). Observers are process-wide callables; an
app adds one at startup and removes it at shutdown. With none registered this costs a
loop over an empty list.
"""
from __future__ import annotations

from typing import Callable

Observer = Callable[[str, str, float], None]
OBSERVERS: list[Observer] = []


def handler_time(scope: str, group: str, seconds: float) -> None:
    for o in OBSERVERS:
        o(scope, group, seconds)
