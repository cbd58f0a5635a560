"""What the PostgreSQL batch writer expects to be committed (store/pg_writer.py).

syncline_append() writes a batch only if the log head, stream heads and idempotency
keys it was planned on are what is committed, so this is only a guess: a wrong one
costs a round trip, never a wrong write. The guess is what the writer knows was
committed (its own commits, and what the database reported when it refused a plan),
overlaid with the outcomes of batches planned but not yet answered, so that a second
batch in flight can be planned on top of the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable

from .planning import Head, StreamKey

MAX_KNOWN_HEADS = 50_000  # streams whose head is remembered; a miss costs one round trip


@dataclass(slots=True)
class Outcome:
    """What a planned batch leaves behind if it commits."""

    position: int
    time_us: int
    heads: dict[StreamKey, Head]


class Expectations:
    def __init__(self, max_heads: int = MAX_KNOWN_HEADS) -> None:
        self.position: int | None = None  # the last log head known committed; None: unknown
        self.time_us = 0
        self._heads: dict[StreamKey, Head] = {}  # absent: the stream is expected not to exist
        self._pending: list[Outcome] = []  # in the order they were planned
        self._max_heads = max_heads

    def log_head(self) -> tuple[int | None, int]:
        if self._pending:
            last = self._pending[-1]
            return last.position, last.time_us
        return self.position, self.time_us

    def head(self, key: StreamKey) -> Head | None:
        for outcome in reversed(self._pending):
            h = outcome.heads.get(key)
            if h is not None:
                return h
        return self._heads.get(key)

    def planned(self, position: int, time_us: int, heads: dict[StreamKey, Head]) -> Outcome:
        outcome = Outcome(position, time_us, heads)
        self._pending.append(outcome)
        return outcome

    def committed(self, outcome: Outcome) -> None:
        self._unpend(outcome, and_later=False)
        self._merge(outcome.position, outcome.time_us, outcome.heads.items())

    def refused(self, outcome: Outcome, row: Any) -> None:
        """The database refused a plan and said what is committed. Batches planned on top
        of this one expected its outcome: they will be refused too, so stop expecting them."""
        self._unpend(outcome, and_later=True)
        self._merge(row["r_position"], row["r_time_us"], _heads(row))

    def reset(self, row: Any, streams: Iterable[StreamKey]) -> None:
        """What syncline_append() reported while this transaction holds the lock: the truth."""
        self._pending.clear()
        self.position, self.time_us = row["r_position"], row["r_time_us"]
        for k in streams:
            self._heads.pop(k, None)
        self._merge(self.position, self.time_us, _heads(row))

    def forget(self) -> None:
        """After an error nobody knows whether the batch committed: ask next time."""
        self.position = None
        self._pending.clear()

    def _unpend(self, outcome: Outcome, and_later: bool) -> None:
        for i, o in enumerate(self._pending):
            if o is outcome:
                if and_later:
                    del self._pending[i:]
                else:
                    del self._pending[i]
                return

    def _merge(self, position: int, time_us: int, heads: Iterable[tuple[StreamKey, Head]]) -> None:
        # Answers may arrive out of order, and the log head and stream versions only
        # grow: the higher one is the newer truth.
        if self.position is None or position > self.position:
            self.position, self.time_us = position, time_us
        known = self._heads
        for k, h in heads:
            old = known.get(k)
            if old is None or h.version > old.version:
                known.pop(k, None)  # re-inserted last: the oldest entries are evicted first
                known[k] = h
        if len(known) > self._max_heads:
            for k in list(islice(known, self._max_heads // 2)):
                del known[k]


def _heads(row: Any) -> list[tuple[StreamKey, Head]]:
    return [
        ((t, s), Head(v, h))
        for t, s, v, h in zip(row["r_tenants"] or (), row["r_streams"] or (), row["r_versions"] or (),
                              row["r_hashes"] or ())
    ]
