"""Per-connection sliding-window rate limit: a warning first, then a temporary disconnect.

Rules: at most ``limit`` messages in any ``window_s``. The first message over the
limit is dropped and answered with a warning; a further one while still over the
limit disconnects the connection, and the (tenant, user) is refused for ``ban_s``.
Times are passed in.
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


class BanList:
    """Keys temporarily refused after a rate-limit disconnect (bounded)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self.max_entries = max_entries

    def ban(self, key: tuple[str, str], until: float) -> None:
        if len(self._until) >= self.max_entries:
            self._until.pop(next(iter(self._until)))
        self._until[key] = until

    def banned_for(self, key: tuple[str, str], now: float) -> float:
        until = self._until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[key]
            return 0.0
        return until - now
