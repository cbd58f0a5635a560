"""Which documents stay loaded: idle unload and a memory budget, with time passed in.

The cache keeps each loaded :class:`~engine.documents.Document` with the time it
was last used and its approximate size (``Document.approx_bytes``, re-read on
every use since documents grow as updates arrive). Two rules unload documents:

- idle: not used for ``idle_after_ms`` → :meth:`DocumentCache.sweep` drops it;
- budget: while the total size is over ``memory_budget_bytes``, the least recently
  used document is dropped (on :meth:`put`, :meth:`touch` and :meth:`sweep`).

A pinned document (an open connection is editing it) is never dropped by either
rule, so a budget smaller than the pinned set is exceeded rather than broken.
Every method that drops documents returns them, so the caller can take a
snapshot of the ones with a long tail before they go.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from .documents import Document

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Slot:
    doc: Document
    used_ms: int
    size: int
    pins: int = 0


class DocumentCache(Generic[K]):
    def __init__(self, *, idle_after_ms: int = 300_000, memory_budget_bytes: int = 256 << 20) -> None:
        self.idle_after_ms = idle_after_ms
        self.memory_budget_bytes = memory_budget_bytes
        # Least recently used first: every use moves the slot to the end.
        self._slots: OrderedDict[K, _Slot] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    @property
    def memory_bytes(self) -> int:
        return self._total

    def keys(self) -> list[K]:
        """Keys, least recently used first."""
        return list(self._slots)

    def peek(self, key: K) -> Document | None:
        """The document, without counting it as a use."""
        slot = self._slots.get(key)
        return None if slot is None else slot.doc

    def get(self, key: K, *, now_ms: int) -> Document | None:
        """The document, counted as a use (it becomes most recently used)."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        self._use(key, slot, now_ms)
        return slot.doc

    def put(self, key: K, doc: Document, *, now_ms: int) -> list[tuple[K, Document]]:
        """Add (or replace) a document; return those evicted to stay under budget."""
        old = self._slots.pop(key, None)
        pins = 0
        if old is not None:
            self._total -= old.size
            pins = old.pins
        slot = _Slot(doc, now_ms, doc.approx_bytes, pins)
        self._slots[key] = slot
        self._total += slot.size
        return self._enforce_budget(keep=key)

    def touch(self, key: K, *, now_ms: int) -> list[tuple[K, Document]]:
        """Record a use (e.g. after applying an update, which may grow the document);
        return documents evicted to stay under budget."""
        slot = self._slots.get(key)
        if slot is None:
            return []
        self._use(key, slot, now_ms)
        return self._enforce_budget(keep=key)

    def pin(self, key: K) -> None:
        self._slots[key].pins += 1

    def unpin(self, key: K) -> None:
        slot = self._slots.get(key)
        if slot is not None and slot.pins > 0:
            slot.pins -= 1

    def remove(self, key: K) -> Document | None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return None
        self._total -= slot.size
        return slot.doc

    def sweep(self, *, now_ms: int) -> list[tuple[K, Document]]:
        """Drop documents idle for at least ``idle_after_ms``, then enforce the budget."""
        horizon = now_ms - self.idle_after_ms
        dropped = [
            (key, slot.doc)
            for key, slot in self._slots.items()
            if slot.pins == 0 and slot.used_ms <= horizon
        ]
        for key, _ in dropped:
            self.remove(key)
        return dropped + self._enforce_budget()

    def _use(self, key: K, slot: _Slot, now_ms: int) -> None:
        # Times may come from different callers slightly out of order: never go back.
        slot.used_ms = max(slot.used_ms, now_ms)
        size = slot.doc.approx_bytes
        self._total += size - slot.size
        slot.size = size
        self._slots.move_to_end(key)

    def _enforce_budget(self, keep: K | None = None) -> list[tuple[K, Document]]:
        if self._total <= self.memory_budget_bytes:
            return []
        evicted: list[tuple[K, Document]] = []
        for key in list(self._slots):
            if self._total <= self.memory_budget_bytes:
                break
            slot = self._slots[key]
            if slot.pins or key == keep:
                continue  # the document just used is the one the caller needs
            evicted.append((key, slot.doc))
            self.remove(key)
        return evicted
