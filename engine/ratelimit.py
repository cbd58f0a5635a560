"""A sliding-window rate limit, with the time passed in: a warning first, then a disconnect.

At most ``limit`` messages in any ``window_s``. The first message over the limit is
dropped and answered with a warning; a further one while still over the limit means
disconnect (the caller bans the user for a while).
"""
from __future__ import annotations

from collections import deque
from enum import Enum


class Verdict(Enum):
    OK = "ok"
    WARN = "warn"
    DISCONNECT = "disconnect"


class SlidingWindow:
    __slots__ = ("limit", "window_s", "_hits", "_warned")

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: deque[float] = deque()
        self._warned = False

    def hit(self, now: float) -> Verdict:
        hits = self._hits
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) < self.limit:
            hits.append(now)
            if len(hits) < self.limit // 2:
                self._warned = False  # well below the limit again: forgive
            return Verdict.OK
        if not self._warned:
            self._warned = True
            return Verdict.WARN
        return Verdict.DISCONNECT

    def retry_after(self, now: float) -> float:
        return max(0.0, self._hits[0] + self.window_s - now) if self._hits else 0.0
