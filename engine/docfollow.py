"""A document that follows the log: updates arrive by several paths, each applied once.

A gateway's document room learns of a ``crdt.update`` in three ways: its own writer's
append returned (the fast path), another gateway relayed it through Redis (early,
maybe never), or the log follower read it (in position order, always). This class
applies each position once, whichever path is first, and snapshots only what it can
vouch for: the state at its gate's cursor, when it holds nothing beyond it.

Pure: the caller does the I/O (reading the log, appending, saving the snapshot).
"""
from __future__ import annotations

from typing import Any

from .documents import DocSnapshot, Document
from .logfollow import DeliveryGate


class FollowedDocument:
    __slots__ = ("document", "gate")

    def __init__(self, document: Document, *, follower_at: int) -> None:
        """``document`` was loaded from the log up to ``document.position``; the follower
        that will feed it had read up to ``follower_at`` when the load began."""
        self.document = document
        self.gate = DeliveryGate(follower_at, floor=document.position)

    def local(self, update: bytes, position: int, version: int = 0) -> bool:
        """This gateway appended ``update`` at ``position``: apply it unless the log or a
        relay brought it first. True if applied now (the caller relays it)."""
        if not self.gate.claim(position):
            return False
        try:
            # (admitted just before the append: its parse is at hand, see apply_update)
            self._apply(update, position=position, version=version, checked=True)
        except BaseException:
            self.gate.unclaim(position)
            raise
        return True

    def relayed(self, update: bytes, position: int) -> bool:
        """Another gateway relayed ``update`` (stored at ``position``): apply it early.
        The position and time are left to the log's copy."""
        if not self.gate.claim(position):
            return False
        try:
            self._apply(update)
        except BaseException:
            self.gate.unclaim(position)
            raise
        return True

    def from_log(self, event: Any) -> bool:
        """The follower read a ``crdt.update`` of this document (positions increasing)."""
        if not self.gate.from_log(event.position):
            return False
        self._apply(event.data, position=event.position, version=event.version)
        return True

    def _apply(self, update: bytes, *, position: int = 0, version: int = 0, checked: bool = False) -> None:
        """Every path here brings an update that is in the log already: apply it as the
        log is applied (trusted), whatever the document's limits. The limits guard what
        enters the log (``Document.admit`` before the append), not what is in it."""
        doc = self.document
        limits, doc.limits = doc.limits, None
        try:
            doc.apply_update(update, position=position, version=version, checked=checked)
        finally:
            doc.limits = limits

    def passed(self, upto: int) -> None:
        """The follower read everything up to ``upto``."""
        self.gate.passed(upto)

    @property
    def exact(self) -> bool:
        """Whether the document holds exactly the stream's updates up to ``gate.cursor``."""
        return self.gate.exact

    def snapshot(self) -> DocSnapshot | None:
        """The document as of the gate's cursor, or None while it holds updates beyond it
        (a relayed or local update the follower has not passed yet)."""
        if not self.gate.exact:
            return None
        doc = self.document
        doc.position = max(doc.position, self.gate.cursor)
        return doc.snapshot()
