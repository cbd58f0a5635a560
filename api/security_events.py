"""Refused attempts, aggregated: an attacker cannot grow the never-pruned ``$security``
stream at will.

Every refused attempt (a cross-tenant read or write, a refused WebSocket message...) is
counted in /metrics. What reaches the log is bounded: per (tenant, user, kind) and window
(``security_window_s``), the first attempt is recorded at once (so an attack is visible
immediately), and the rest of the window becomes ONE summary event when the window closes
or the gateway stops: the count, the first and last time, and a few sample details
(``security_samples``). So a principal hammering one kind writes at most two events per
window, however many attempts it makes.

The table of open windows is bounded too (``security_aggregate_max`` keys): an attempt that
would open a window past it is counted (``syncline_security_aggregate_overflow_total``) and
summed into one overflow line in the log at the next flush, but it is not recorded per
principal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_DETAIL_MAX = 200


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(details: dict[str, Any]) -> dict[str, str]:
    """Details as they are recorded: strings of at most 200 characters."""
    return {str(k)[:64]: str(v)[:_DETAIL_MAX] for k, v in details.items()}


@dataclass
class Window:
    tenant: str
    user: str
    client: str
    kind: str
    opened: float  # when the window's first attempt came (and was recorded at once)
    first: float = 0.0  # first and last attempt folded into the summary (after the first)
    last: float = 0.0
    count: int = 0  # attempts folded into the summary
    samples: list[dict[str, str]] = field(default_factory=list)

    def summary(self, window_s: float) -> dict[str, Any]:
        return {"user": self.user, "count": self.count, "first": iso(self.first), "last": iso(self.last),
                "window_s": window_s, "samples": self.samples, "aggregated": True}


class SecurityAggregator:
    """The bounded in-memory table of open windows. Pure bookkeeping: the gateway records."""

    def __init__(self, *, window_s: float, max_keys: int, samples: int) -> None:
        self.window_s = max(0.001, float(window_s))
        self.max_keys = max(1, int(max_keys))
        self.samples = max(0, int(samples))
        self.windows: dict[tuple[str, str, str], Window] = {}
        self.overflow = 0  # attempts not tracked since the last flush (table full)

    def add(self, tenant: str, user: str, client: str, kind: str, details: dict[str, Any],
            now: float) -> str:
        """Account for one attempt. Returns "record" (the first of a new window: write it
        now), "folded" (counted into its window's summary) or "overflow" (table full)."""
        key = (tenant, user, kind)
        w = self.windows.get(key)
        if w is not None and now - w.opened >= self.window_s:
            return "expired"  # the caller flushes due windows, then adds again
        if w is None:
            if len(self.windows) >= self.max_keys:
                self.overflow += 1
                return "overflow"
            self.windows[key] = Window(tenant, user, client, kind, opened=now)
            return "record"
        if w.count == 0:
            w.first = now
        w.count += 1
        w.last = now
        if len(w.samples) < self.samples:
            w.samples.append(clip(details))
        return "folded"

    def due(self, now: float, *, everything: bool = False) -> list[Window]:
        """Remove and return the windows that have closed (all of them with ``everything``)."""
        closed = [k for k, w in self.windows.items() if everything or now - w.opened >= self.window_s]
        return [self.windows.pop(k) for k in closed]
