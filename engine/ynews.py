"""Does a Yjs update bring anything a document lacks? Decided from the update's own
structs and delete set, against the document's state vector and a delete-set index
kept incrementally: never by re-reading the document.

- **Structs**: an update brings structs when one of them reaches past the document's
  state vector (and, for a document holding updates that wait for others, past what
  it holds: :class:`~engine.ypending.PendingIndex`).
- **Deletions**: an update brings deletions when one of its delete ranges is not
  covered by :class:`DeleteSetIndex`, the union of the delete sets of every update
  the document has applied (or holds), kept per client as sorted, merged ranges.

The index starts as the document's own delete set, read once (:class:`~engine.documents.Document`
does it on the first question), and then takes in the delete set of every update
applied. It can only *under*-state the document's deletions from then on (a document
also deletes items implicitly: the children of a deleted type, the loser of two
concurrent writes to one map key), so an answer can be a redundant "news", never a
wrong "nothing new": a redundant update is harmless, a dropped one is not. When a
question cannot be answered cheaply (bytes this module does not model) the answer is
also "news". The cost of one answer is the parse of that update's delete set plus a
binary search per range: it does not grow with the document's deleted ranges.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping

from .yparse import SKIP, ClientKey, ParsedUpdate


class DeleteSetIndex:
    """Per client, sorted disjoint ranges ``[start, end)`` (neighbours merged). Clients
    are keys as :mod:`engine.yparse` reads them (their var-uint bytes)."""

    __slots__ = ("_clients", "ranges_added")

    def __init__(self) -> None:
        # client -> (starts, ends), both sorted; ends[i] < starts[i + 1]
        self._clients: dict[ClientKey, tuple[list[int], list[int]]] = {}
        self.ranges_added = 0  # ranges fed in (the parse work), for tests and metrics

    @classmethod
    def of(cls, deletes: Mapping[ClientKey, Iterable[tuple[int, int]]]) -> DeleteSetIndex:
        index = cls()
        index.add_all(deletes)
        return index

    def __len__(self) -> int:
        """The number of disjoint ranges held."""
        return sum(len(s) for s, _ in self._clients.values())

    def add_all(self, deletes: Mapping[ClientKey, Iterable[tuple[int, int]]]) -> None:
        for client, ranges in deletes.items():
            for clock, length in ranges:
                self.add(client, clock, length)

    def add(self, client: ClientKey, clock: int, length: int) -> None:
        """Add ``[clock, clock + length)`` of ``client``."""
        if length <= 0:
            return
        self.ranges_added += 1
        entry = self._clients.get(client)
        end = clock + length
        if entry is None:
            self._clients[client] = ([clock], [end])
            return
        starts, ends = entry
        n = len(starts)
        if not n or clock > ends[-1]:  # the usual case: past everything held
            starts.append(clock)
            ends.append(end)
            return
        # The first range that ends at or after ``clock`` (touching ranges merge).
        i = bisect_left(ends, clock)
        if i == n or starts[i] > end:  # falls in a gap: insert
            starts.insert(i, clock)
            ends.insert(i, end)
            return
        # Merge ranges i..j-1 (all that start at or before ``end``).
        j = bisect_right(starts, end, lo=i)
        new_start = min(starts[i], clock)
        new_end = max(ends[j - 1], end)
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]

    def covers(self, client: ClientKey, clock: int, length: int) -> bool:
        """Whether ``[clock, clock + length)`` of ``client`` lies within one held range."""
        if length <= 0:
            return True
        entry = self._clients.get(client)
        if entry is None:
            return False
        starts, ends = entry
        i = bisect_right(starts, clock) - 1
        return i >= 0 and ends[i] >= clock + length

    def covers_all(self, deletes: Mapping[ClientKey, Iterable[tuple[int, int]]]) -> bool:
        covers = self.covers
        return all(covers(c, k, n) for c, rs in deletes.items() for k, n in rs)

    def count(self, client: ClientKey) -> int:
        """The number of disjoint ranges held for ``client``."""
        entry = self._clients.get(client)
        return 0 if entry is None else len(entry[0])

    def take_below(self, client: ClientKey, clock: int) -> list[tuple[int, int]]:
        """Remove and return (as (clock, length)) the parts of ``client``'s ranges below
        ``clock``."""
        entry = self._clients.get(client)
        if entry is None:
            return []
        starts, ends = entry
        i = bisect_left(starts, clock)
        if not i:
            return []
        out = [(s, min(e, clock) - s) for s, e in zip(starts[:i], ends[:i], strict=True)]
        if ends[i - 1] > clock:  # the last one goes on past ``clock``: keep its rest
            starts[i - 1] = clock
            del starts[: i - 1]
            del ends[: i - 1]
        else:
            del starts[:i]
            del ends[:i]
        if not starts:
            del self._clients[client]
        return out

    def ranges(self, client: ClientKey) -> list[tuple[int, int]]:
        """The held ranges of ``client`` as (clock, length), in order."""
        entry = self._clients.get(client)
        if entry is None:
            return []
        return [(s, e - s) for s, e in zip(*entry, strict=True)]

    def clients(self) -> list[ClientKey]:
        return list(self._clients)


def brings_news(
    parsed: ParsedUpdate,
    state_vector: Mapping[ClientKey, int],
    deleted: DeleteSetIndex,
    held: DeleteSetIndex | None = None,
) -> bool:
    """Whether an update (its structure, :func:`engine.yparse.parse_update`) brings
    anything to a document at ``state_vector`` whose deletions are (at least)
    ``deleted`` and which holds the structs ``held`` waiting: a struct reaching past
    the state vector that is not held, or a delete range not covered."""
    for client, structs in parsed.runs:
        have = state_vector.get(client, 0)
        for clock, length, kind, _, _, _ in structs:
            end = clock + length
            if end > have and kind != SKIP:
                lo = max(have, clock)
                if held is None or not held.covers(client, lo, end - lo):
                    return True
    return not deleted.covers_all(parsed.deletes)
