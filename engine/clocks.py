"""Logical clocks: vector clocks (causality) and hybrid logical clocks (a total order).

A :class:`VectorClock` says whether one write could have seen another: ``compare``
answers BEFORE, AFTER, EQUAL or CONCURRENT. It is immutable; ``merge`` and
``increment`` return new clocks. Zero counters are never stored, so two clocks
that mean the same thing are equal and encode to the same bytes.

An :class:`HLCTimestamp` is ``(wall_ms, logical, node)``; tuple order is a total
order that respects causality when every node stamps its sends with
:meth:`HLC.now` and its receives with :meth:`HLC.receive`. The physical clock
is injected, so the engine never reads the system time itself.
"""
from __future__ import annotations

import re
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from .errors import ProtocolError

WALL_MS_MAX = (1 << 48) - 1  # 6 bytes of milliseconds: until the year 10889
LOGICAL_MAX = (1 << 32) - 1
NODE_BYTES_MAX = 256
VECTOR_NODES_MAX = 4096
COUNTER_MAX = (1 << 63) - 1


class InvalidClock(ProtocolError):
    """A clock value that does not decode, or is out of range."""

    code = "invalid_clock"


class ClockDriftError(InvalidClock):
    """A remote timestamp is further ahead of our physical clock than allowed."""

    code = "clock_drift"


class Ordering(Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


# --------------------------------------------------------------------------- vector clocks


def _sorted(c: dict[str, int]) -> dict[str, int]:
    # Sorting the keys, not the items: string comparisons instead of tuple ones (3x faster).
    return {node: c[node] for node in sorted(c)}


class VectorClock:
    """An immutable map node -> counter (counters >= 1; absent means 0)."""

    # ``_c`` is kept sorted by node (the canonical order) except after a merge
    # added nodes: then ``_sorted`` is False and the first reader of the order
    # (items, iteration, encodings) sorts it once. Sorting after every merge cost
    # more than the merge itself for wide clocks; equality and hashing ignore order.
    __slots__ = ("_c", "_hash", "_sorted")
    _c: dict[str, int]
    _hash: int | None
    _sorted: bool

    def __init__(self, counts: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        items = counts.items() if isinstance(counts, Mapping) else counts
        c: dict[str, int] = {}
        for node, n in items:
            if not isinstance(node, str) or not node or type(n) is not int or n < 0 or n > COUNTER_MAX:
                raise InvalidClock(f"invalid vector clock entry {node!r}: {n!r}")
            if n:
                c[node] = n
        if len(c) > 1:
            c = _sorted(c)
        _set_c(self, c)
        _set_hash(self, None)
        _set_sorted(self, True)

    # The slots are set through their descriptors (``_set_c`` and co., below the class):
    # ``object.__setattr__`` costs about twice as much, and clocks are built several
    # times per op on the reconcile and fold paths.

    @classmethod
    def _trusted(cls, c: dict[str, int]) -> VectorClock:
        # The caller guarantees a fresh dict of valid, nonzero counters, sorted by
        # node (kept sorted so that the canonical forms below need no sort).
        vc = _new_object(cls)
        _set_c(vc, c)
        _set_hash(vc, None)
        _set_sorted(vc, True)
        return vc

    @classmethod
    def _unsorted(cls, c: dict[str, int]) -> VectorClock:
        # As ``_trusted``, for a dict whose nodes may be out of order.
        vc = _new_object(cls)
        _set_c(vc, c)
        _set_hash(vc, None)
        _set_sorted(vc, False)
        return vc

    def _canonical(self) -> dict[str, int]:
        """``_c`` in node order (sorted once, on first need; same entries, so still immutable)."""
        if not self._sorted:
            _set_c(self, _sorted(self._c))
            _set_sorted(self, True)
        return self._c

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("VectorClock is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("VectorClock is immutable")

    # mapping-like reading
    def __getitem__(self, node: str) -> int:
        return self._c.get(node, 0)

    def get(self, node: str) -> int:
        return self._c.get(node, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._canonical())

    def __len__(self) -> int:
        return len(self._c)

    def __bool__(self) -> bool:
        return bool(self._c)

    def items(self) -> tuple[tuple[str, int], ...]:
        """Entries sorted by node: the canonical order."""
        return tuple(self._canonical().items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return self._c == other._c

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(frozenset(self._c.items()))
            _set_hash(self, h)
        return h

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}:{v}" for k, v in self.items())
        return f"VectorClock({{{inner}}})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (VectorClock, (dict(self._c),))

    # causality
    def compare(self, other: VectorClock) -> Ordering:
        a, b = self._c, other._c
        a_ahead = b_ahead = False
        common = 0
        for node, n in a.items():
            m = b.get(node, 0)
            if m:
                common += 1
            if n > m:
                a_ahead = True
            elif n < m:
                b_ahead = True
        if len(b) > common:
            # Entries only in ``b`` are >= 1, so any such key puts ``b`` ahead.
            b_ahead = True
        if a_ahead:
            return Ordering.CONCURRENT if b_ahead else Ordering.AFTER
        return Ordering.BEFORE if b_ahead else Ordering.EQUAL

    def __le__(self, other: VectorClock) -> bool:
        """True when every counter here is <= the other's (self happened before or equals)."""
        b = other._c
        if len(self._c) > len(b):
            return False
        for node, n in self._c.items():
            if n > b.get(node, 0):
                return False
        return True

    def __lt__(self, other: VectorClock) -> bool:
        return self <= other and self._c != other._c

    def __ge__(self, other: VectorClock) -> bool:
        return other <= self

    def __gt__(self, other: VectorClock) -> bool:
        return other < self

    def concurrent_with(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.CONCURRENT

    def merge(self, other: VectorClock) -> VectorClock:
        """The least upper bound: pointwise max. Commutative, associative, idempotent."""
        a, b = self._c, other._c
        if len(b) > len(a):
            a, b = b, a
        for node, n in b.items():
            if n > a.get(node, 0):
                break
        else:  # ``a`` already covers ``b``: no copy (the usual case for a newer op)
            return self if a is self._c else other
        out = dict(a)
        changed = added = False
        for node, n in b.items():
            m = out.get(node, 0)
            if n > m:
                out[node] = n
                changed = True
                if not m:
                    added = True
        if not changed:
            return self if a is self._c else other
        in_order = not added and (self._sorted if a is self._c else other._sorted)
        return VectorClock._trusted(out) if in_order else VectorClock._unsorted(out)

    def increment(self, node: str) -> VectorClock:
        if not isinstance(node, str) or not node:
            raise InvalidClock(f"invalid node id {node!r}")
        out = dict(self._canonical())
        n = out.get(node, 0)
        out[node] = n + 1
        return VectorClock._trusted(out if n else _sorted(out))

    # encodings
    def to_dict(self) -> dict[str, int]:
        """A short dict (for msgpack/JSON wires), keys sorted."""
        return dict(self._canonical())

    @classmethod
    def from_dict(cls, data: Any) -> VectorClock:
        if type(data) is dict and len(data) <= VECTOR_NODES_MAX:
            # Fast path for what our own encoders write (a plain dict, nodes sorted,
            # counters >= 1): the checks of ``__init__`` in one pass, no sort. Any
            # other input takes the general path, which also raises the errors.
            prev = ""
            for node, n in data.items():
                if type(node) is not str or node <= prev or type(n) is not int or not 0 < n <= COUNTER_MAX:
                    break
                prev = node
            else:
                # (``cls._trusted``, inline: one clock is decoded per folded event)
                vc = _new_object(cls)
                _set_c(vc, dict(data))
                _set_hash(vc, None)
                _set_sorted(vc, True)
                return vc
        if not isinstance(data, Mapping):
            raise InvalidClock("a vector clock must be a map of node -> counter")
        if len(data) > VECTOR_NODES_MAX:
            raise InvalidClock("too many vector clock entries")
        return cls(data)

    def to_bytes(self) -> bytes:
        """Compact binary form: per entry, sorted by node: uvarint len, node utf-8, uvarint counter."""
        out = bytearray()
        for node, n in self.items():
            raw = node.encode("utf-8")
            _put_uvarint(out, len(raw))
            out += raw
            _put_uvarint(out, n)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorClock:
        """Decode :meth:`to_bytes` output; anything else raises :class:`InvalidClock`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidClock("vector clock bytes expected")
        buf = bytes(data)
        pos = 0
        c: dict[str, int] = {}
        prev: str | None = None
        while pos < len(buf):
            if len(c) >= VECTOR_NODES_MAX:
                raise InvalidClock("too many vector clock entries")
            size, pos = _get_uvarint(buf, pos)
            if size == 0 or size > NODE_BYTES_MAX or pos + size > len(buf):
                raise InvalidClock("bad node length in vector clock")
            try:
                node = buf[pos : pos + size].decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidClock("node id is not utf-8") from e
            pos += size
            n, pos = _get_uvarint(buf, pos)
            # Canonical form only: strictly increasing nodes, no zero counters, so
            # every clock has exactly one encoding (equal clocks -> equal bytes).
            if (prev is not None and node <= prev) or n == 0 or n > COUNTER_MAX:
                raise InvalidClock("non-canonical vector clock bytes")
            c[node] = n
            prev = node
        return cls._trusted(c)


_new_object = object.__new__
# The slots' member descriptors (from the class dict: mypy knows the slots only as the
# attributes annotated in the class).
_set_c: Callable[[VectorClock, dict[str, int]], None] = VectorClock.__dict__["_c"].__set__
_set_hash: Callable[[VectorClock, int | None], None] = VectorClock.__dict__["_hash"].__set__
_set_sorted: Callable[[VectorClock, bool], None] = VectorClock.__dict__["_sorted"].__set__

EMPTY_CLOCK = VectorClock()


class ClockMerger:
    """The merge of a base clock and every clock ``add``-ed to it, kept in one mutable
    dict: folding n clocks into one costs one copy instead of n new clocks. Adding a
    clock the result already covers does nothing. Private to its user, never shared."""

    __slots__ = ("_base", "_c")

    def __init__(self, base: VectorClock) -> None:
        self._base = base
        self._c: dict[str, int] | None = None

    def add(self, clock: VectorClock) -> bool:
        """Merge ``clock`` in. Returns True when ``clock`` covers everything merged so far
        (then it is the result), False when that is not known to hold (it may still).
        A caller whose other clocks are all bounded by this merge learns for free that
        ``clock`` comes after (or equals) each of them."""
        c = self._c
        b = clock._c
        if c is None:
            base = self._base._c
            for node, n in b.items():
                if n > base.get(node, 0):
                    break
            else:  # covered: the record's clock already holds this op's history
                return False
            if len(b) >= len(base):
                for node, n in base.items():
                    if n > b.get(node, 0):
                        break
                else:  # ``clock`` covers the base: it is the merge (the usual newer op)
                    self._base = clock
                    return True
            c = self._c = dict(base)
        get = c.get
        for node, n in b.items():
            if n > get(node, 0):
                c[node] = n
        return False

    def result(self) -> VectorClock:
        c = self._c
        if c is None:
            return self._base
        # New nodes were appended at the end; the canonical order is sorted.
        base = self._base
        in_order = base._sorted and len(c) == len(base._c)
        vc = VectorClock._trusted(c) if in_order else VectorClock._unsorted(c)
        self._base, self._c = vc, None  # the dict now belongs to ``vc``: never touch it again
        return vc




def _put_uvarint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _get_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidClock("truncated varint")
        if shift > 63:
            raise InvalidClock("varint too long")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and shift:
                raise InvalidClock("non-canonical varint")
            return n, pos
        shift += 7


# --------------------------------------------------------------------------- hybrid logical clocks


class HLCTimestamp(NamedTuple):
    """A hybrid logical clock reading. Tuple order is the total order."""

    wall_ms: int
    logical: int
    node: str

    def encode(self) -> str:
        """Fixed-width hex fields then the node: string order == timestamp order."""
        return "%012x-%08x-%s" % self  # (%-formatting: 3x faster than an f-string here)

    @classmethod
    def decode(cls, text: Any) -> HLCTimestamp:
        m = _HLC_TEXT.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidClock(f"invalid HLC timestamp {str(text)[:80]!r}")
        wall, logical, node = m.groups()
        if len(node) > 64 or not node.isascii():
            return cls.checked(int(wall, 16), int(logical, 16), node)  # the node's byte length
        # 12 and 8 hex digits are within WALL_MS_MAX and LOGICAL_MAX by construction,
        # and a short ASCII node is within NODE_BYTES_MAX: nothing left to check.
        return _new_hlc(cls, (int(wall, 16), int(logical, 16), node))

    def to_bytes(self) -> bytes:
        """6 bytes wall, 4 bytes logical (big-endian), node utf-8: byte order == timestamp order."""
        return self.wall_ms.to_bytes(6, "big") + self.logical.to_bytes(4, "big") + self.node.encode("utf-8")

    @classmethod
    def from_bytes(cls, data: Any) -> HLCTimestamp:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 11:
            raise InvalidClock("HLC timestamp bytes too short")
        raw = bytes(data)
        try:
            node = raw[10:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidClock("HLC node is not utf-8") from e
        return cls.checked(int.from_bytes(raw[:6], "big"), int.from_bytes(raw[6:10], "big"), node)

    @classmethod
    def checked(cls, wall_ms: Any, logical: Any, node: Any) -> HLCTimestamp:
        """Build a timestamp, raising :class:`InvalidClock` when a part is out of range."""
        if type(wall_ms) is not int or not 0 <= wall_ms <= WALL_MS_MAX:
            raise InvalidClock(f"HLC wall time out of range: {wall_ms!r}")
        if type(logical) is not int or not 0 <= logical <= LOGICAL_MAX:
            raise InvalidClock(f"HLC logical counter out of range: {logical!r}")
        if not isinstance(node, str) or not node or len(node.encode("utf-8")) > NODE_BYTES_MAX:
            raise InvalidClock(f"invalid HLC node {str(node)[:80]!r}")
        return cls(wall_ms, logical, node)


# ``encode``'s format: 12 and 8 lower-case hex digits, then a non-empty node.
_HLC_TEXT = re.compile(r"([0-9a-f]{12})-([0-9a-f]{8})-(.+)", re.DOTALL)
_new_hlc = tuple.__new__


def _clamp_wall(pt: int) -> int:
    if type(pt) is not int:
        pt = int(pt)
    return 0 if pt < 0 else WALL_MS_MAX if pt > WALL_MS_MAX else pt


def _advance(wall: int, logical: int, node: str) -> HLCTimestamp:
    # When the logical counter would overflow its 32 bits we carry into the
    # wall time instead: (wall + 1, 0) still sorts after (wall, LOGICAL_MAX).
    if logical > LOGICAL_MAX:
        wall, logical = wall + 1, 0
        if wall > WALL_MS_MAX:
            raise InvalidClock("HLC exhausted")
    return HLCTimestamp(wall, logical, node)


def hlc_send(last: HLCTimestamp | None, physical_ms: int, node: str) -> HLCTimestamp:
    """The next local timestamp after ``last``, given the physical clock reading."""
    pt = _clamp_wall(physical_ms)
    if last is None or pt > last.wall_ms:
        return HLCTimestamp(pt, 0, node)
    return _advance(last.wall_ms, last.logical + 1, node)


def hlc_receive(
    last: HLCTimestamp | None,
    remote: HLCTimestamp,
    physical_ms: int,
    node: str,
    max_drift_ms: int | None = None,
) -> HLCTimestamp:
    """The local timestamp after receiving ``remote``: greater than both ``last`` and ``remote``."""
    pt = _clamp_wall(physical_ms)
    if max_drift_ms is not None and remote.wall_ms - pt > max_drift_ms:
        raise ClockDriftError(
            f"remote clock is {remote.wall_ms - pt} ms ahead (limit {max_drift_ms} ms)",
            remote=remote.encode(),
        )
    lw, ll = (last.wall_ms, last.logical) if last is not None else (-1, 0)
    wall = max(lw, remote.wall_ms, pt)
    if wall == lw and wall == remote.wall_ms:
        logical = max(ll, remote.logical) + 1
    elif wall == lw:
        logical = ll + 1
    elif wall == remote.wall_ms:
        logical = remote.logical + 1
    else:
        logical = 0
    return _advance(wall, logical, node)


class HLC:
    """A node's hybrid logical clock, reading physical time from an injected callable.

    Every timestamp it returns is strictly greater than the previous one, whatever
    the physical clock does (stall, jump back, jump forward).
    """

    __slots__ = ("node", "_physical_ms", "_last", "max_drift_ms")

    def __init__(
        self,
        node: str,
        physical_ms: Callable[[], int],
        *,
        max_drift_ms: int | None = None,
        last: HLCTimestamp | None = None,
    ) -> None:
        if not isinstance(node, str) or not node:
            raise InvalidClock(f"invalid node id {node!r}")
        self.node = node
        self._physical_ms = physical_ms
        self._last = last
        self.max_drift_ms = max_drift_ms

    @property
    def last(self) -> HLCTimestamp | None:
        return self._last

    def now(self) -> HLCTimestamp:
        """A timestamp for a local event or a send."""
        ts = hlc_send(self._last, self._physical_ms(), self.node)
        self._last = ts
        return ts

    def receive(self, remote: HLCTimestamp) -> HLCTimestamp:
        """Observe a remote timestamp; returns our new timestamp (> remote and > last)."""
        ts = hlc_receive(self._last, remote, self._physical_ms(), self.node, self.max_drift_ms)
        self._last = ts
        return ts
