"""Following the log without missing or repeating anything: the delivery gate.

A gateway learns of a committed event in two ways:

- the **fast path**: its own append returned the event's position, or another
  gateway relayed it through Redis (an accelerator that may be late, lost or down);
- the **log**: a follower reads the log in position order from a cursor, woken by a
  doorbell and polling when the doorbell is silent. This path is complete.

:class:`DeliveryGate` merges the two so that each position is acted on exactly once,
whichever path brings it first, and it knows the highest position below which
*everything* has been seen (``cursor``). A document room snapshots only at that
position: a snapshot never claims a position it has not applied in full.

Pure bookkeeping: positions in, decisions out.
"""
from __future__ import annotations

from heapq import heappop, heappush

AHEAD_MAX = 65_536  # positions seen early (fast path) and not yet passed by the log


class DeliveryGate:
    """``cursor``: every relevant event at or below it has been acted on (the log
    follower has passed it). ``ahead``: positions above the cursor already acted on
    through the fast path, waiting for the follower to pass them."""

    __slots__ = ("cursor", "floor", "_ahead", "_heap", "overflowed")

    def __init__(self, cursor: int = 0, *, floor: int = 0) -> None:
        self.cursor = cursor
        # Everything at or below ``floor`` was acted on by other means (a document loaded
        # from the log up to there), even where the follower has not passed it yet.
        self.floor = floor
        self._ahead: set[int] = set()
        self._heap: list[int] = []  # the same positions, smallest first, to drop them as the cursor passes
        self.overflowed = 0  # fast-path positions not remembered because ``ahead`` was full

    @property
    def ahead(self) -> int:
        """How many positions were acted on early and wait for the log to pass them."""
        return len(self._ahead)

    @property
    def exact(self) -> bool:
        """Whether what was acted on is exactly everything up to ``cursor``: nothing
        early, and nothing loaded beyond it."""
        return not self._ahead and self.floor <= self.cursor

    def seen(self, position: int) -> bool:
        return position <= self.cursor or position <= self.floor or position in self._ahead

    def claim(self, position: int) -> bool:
        """The fast path brings ``position``: True if it is new (act on it now), False if
        it was already acted on. When ``ahead`` is full the position is not remembered:
        the caller must then *not* act on it, and the log will bring it (later, once)."""
        if position <= self.cursor or position <= self.floor or position in self._ahead:
            return False
        if len(self._ahead) >= AHEAD_MAX:
            self.overflowed += 1
            return False
        self._ahead.add(position)
        heappush(self._heap, position)
        return True

    def unclaim(self, position: int) -> None:
        """Undo :meth:`claim` (acting on it failed): the log copy will be acted on."""
        self._ahead.discard(position)

    def from_log(self, position: int) -> bool:
        """The follower read ``position`` (in increasing order): True if it is new."""
        if position <= self.cursor:
            return False
        new = position > self.floor and position not in self._ahead
        self.passed(position)
        return new

    def passed(self, upto: int) -> None:
        """The follower read everything relevant up to ``upto``."""
        if upto <= self.cursor:
            return
        self.cursor = upto
        heap, ahead = self._heap, self._ahead
        while heap and heap[0] <= upto:
            ahead.discard(heappop(heap))
