"""Server-side event filters: stream prefixes, exact streams, type globs, payload predicates.

A filter is data, so the store can push the parts SQL understands (stream prefix,
type glob) into the query and check the rest in Python with :meth:`EventFilter.matches`.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .errors import ValidationError
from .events import RecordedEvent


@dataclass(frozen=True, slots=True)
class Predicate:
    """``data[path] == value`` (op ``eq``) or ``data[path] in value`` (op ``in``).

    ``path`` is dotted: ``"customer.country"`` reads ``data["customer"]["country"]``.
    """

    path: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in ("eq", "in"):
            raise ValidationError(f"unknown predicate op {self.op!r}", code_hint="eq|in")
        if self.op == "in" and not isinstance(self.value, (tuple, list, frozenset, set)):
            raise ValidationError("an 'in' predicate needs a list of values")

    def matches(self, data: Any) -> bool:
        cur = data
        for part in self.path.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return False
            cur = cur[part]
        if self.op == "eq":
            return cur == self.value
        try:
            return cur in self.value
        except TypeError:
            return False


_BAD_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class EventFilter:
    stream_prefixes: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # glob patterns: "order.*", "crdt.update"
    where: tuple[Predicate, ...] = ()
    # Derived once, for matching in hot loops (projections test every event).
    _stream_set: frozenset = field(init=False, repr=False, compare=False, default=frozenset())
    _literal_types: frozenset | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for text in (*self.stream_prefixes, *self.streams, *self.types):
            # (a NUL or a lone surrogate cannot even reach PostgreSQL: refuse it here, typed)
            if type(text) is not str or len(text) > 255 or _BAD_CHARS.search(text):
                raise ValidationError(f"invalid stream, prefix or type filter {str(text)[:40]!r}",
                                      reason="invalid_filter")
        object.__setattr__(self, "_stream_set", frozenset(self.streams))
        if self.types and not any(c in t for t in self.types for c in "*?["):
            object.__setattr__(self, "_literal_types", frozenset(self.types))

    @property
    def is_empty(self) -> bool:
        return not (self.stream_prefixes or self.streams or self.types or self.where)

    def matches(self, event: RecordedEvent) -> bool:
        if self.streams or self.stream_prefixes:
            stream = event.stream
            if stream not in self._stream_set and not stream.startswith(self.stream_prefixes):
                return False
        if self.types:
            if self._literal_types is not None:
                if event.type not in self._literal_types:
                    return False
            elif not any(_glob(t).match(event.type) for t in self.types):
                return False
        return not self.where or all(p.matches(event.data) for p in self.where)


@lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def glob_to_like(pattern: str) -> str | None:
    """A SQL LIKE pattern equal to the glob, or None when LIKE cannot express it."""
    if any(c in pattern for c in "[]?"):
        return None
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def prefix_to_like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
