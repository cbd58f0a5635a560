"""A sliding-window rate limit, with the time passed in: a warning first, then a disconnect.

At most ``limit`` messages in any ``window_s``. The first message over the limit is
dropped and answered with a warning; a further one while still over the limit means
disconnect (the caller bans the user for a while).
"""
from __future__ import annotations

from collections import deque
from enum import Enum

from . import protocol as P

# The native protocol's limit on application messages per connection (``SessionConfig``,
# ``SYNCLINE_RATE_LIMIT_MESSAGES``): 20 a second sustained over a minute, far above an
# editing client (the client kit writing 4 ops a second sends 240 a minute).
DEFAULT_RATE_LIMIT_MESSAGES = 1200
# Protocol upkeep the session never counts against that limit: acks (they answer what the
# server sent), pings (the heartbeat) and hello (naming the client, resume positions).
# (a bus consumer's credits and settlements are upkeep too: they free what the server holds)
UNCOUNTED = frozenset({P.ACK, P.PING, P.HELLO, P.CREDIT, P.DACK, P.DNACK, P.EXTEND})


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


class TokenBucket:
    """A rate with a burst, in constant memory: ``rate`` units a second refill a bucket of
    ``burst``; :meth:`take` spends ``n`` units if the bucket holds them. Times are passed in."""

    __slots__ = ("rate", "burst", "_level", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if n > self._level:
            return False
        self._level -= n
        return True

    def retry_after(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` units would be there (inf if ``n`` exceeds the burst)."""
        self._refill(now)
        if n <= self._level:
            return 0.0
        if n > self.burst or self.rate <= 0:
            return float("inf")
        return (n - self._level) / self.rate


class FixedWindows:
    """Counters per key in fixed windows of ``window_s`` (the same arithmetic Redis does
    with ``INCR`` on a key per window, so a local and a shared count agree). Bounded:
    at most ``max_keys`` keys, the oldest forgotten first."""

    __slots__ = ("limit", "window_s", "max_keys", "_counts")

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._counts: dict[object, tuple[int, int]] = {}  # key -> (window index, count)

    def window(self, now: float) -> int:
        return int(now // self.window_s)

    def hit(self, key: object, now: float, n: int = 1) -> int:
        """Count ``n`` hits of ``key``; the count in the current window after them."""
        w = self.window(now)
        counts = self._counts
        got = counts.pop(key, None)  # (re-inserted last: the dict stays in least-recent-first order)
        count = got[1] + n if got is not None and got[0] == w else n
        if len(counts) >= self.max_keys:
            counts.pop(next(iter(counts)))
        counts[key] = (w, count)
        return count

    def retry_after(self, now: float) -> float:
        """Seconds until the current window ends."""
        return (self.window(now) + 1) * self.window_s - now
