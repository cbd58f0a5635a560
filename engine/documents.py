"""CRDT documents (``doc/<id>`` streams): a pycrdt ``Doc`` plus the log position it covers.

A document's history is its ``crdt.update`` events; each event's payload is the
raw Yjs update bytes. The in-memory :class:`Document` is built from the latest
:class:`DocSnapshot` plus the tail of updates after it (:meth:`Document.load`).
Snapshots are derived data: dropping them and replaying the whole stream gives
the same document. Updates commute, so neither order nor duplicates matter for
the result; positions only tell which events a snapshot already covers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pycrdt

from .errors import IntegrityViolation
from .events import RecordedEvent
from .yupdates import (
    EMPTY_STATE_VECTOR,
    InvalidUpdate,
    as_bytes,
    check_header,
    check_state_vector,
    guard,
    is_fatal,
    merge,
)

CRDT_UPDATE = "crdt.update"
DOC_STREAM_PREFIX = "doc/"

# pycrdt keeps a document as Rust structs, about 5x its encoded state once loaded
# from a snapshot; keystroke updates applied one by one cost about half their
# encoded size (they merge into existing blocks). Measured by RSS on the
# automerge-paper trace (105k characters: 377 KB state, 1.9 MB resident). These
# factors turn encoded sizes into a rough resident size for the cache's memory
# budget; rough is enough, the budget is a soft limit.
_BASE_BYTES = 4096
_STATE_FACTOR = 5
_UPDATE_FACTOR = 1
_CHECK_EVERY = 256  # updates applied between checks for ones yrs left pending


def _raw_doc(ydoc: pycrdt.Doc) -> Any:
    """pycrdt's inner document, when it is the pycrdt whose apply_update we mirror
    (0.14: ``Doc._doc`` with ``create_transaction`` and ``apply_update(txn, update)``),
    the Doc is plain (no model, single-threaded) and no transaction is open; else None."""
    raw = getattr(ydoc, "_doc", None)
    if (
        raw is None
        or not _PYCRDT_014
        or getattr(ydoc, "_Model", None) is not None
        or getattr(ydoc, "_allow_multithreading", True)
        or getattr(ydoc, "_txn", True) is not None
        or not hasattr(raw, "create_transaction")
        or not hasattr(raw, "apply_update")
    ):
        return None
    return raw


_PYCRDT_014 = getattr(pycrdt, "__version__", "").startswith("0.14.")


class SnapshotCorrupt(IntegrityViolation):
    """A snapshot's bytes do not match its checksum; load from the log instead."""

    code = "snapshot_corrupt"


def checksum(state: bytes) -> str:
    return hashlib.sha256(state).hexdigest()


@dataclass(frozen=True, slots=True)
class DocSnapshot:
    """The full state of a document as of log ``position`` (stream ``version``).

    ``state`` is a Yjs update holding everything; ``checksum`` is its sha256 (hex).
    ``time_us`` is the commit time of the last covered event (for time travel by time).
    """

    position: int
    state: bytes
    checksum: str
    version: int = 0
    time_us: int = 0

    @classmethod
    def of(cls, state: bytes, *, position: int, version: int = 0, time_us: int = 0) -> DocSnapshot:
        return cls(position, state, checksum(state), version, time_us)

    def verify(self) -> DocSnapshot:
        if checksum(self.state) != self.checksum:
            raise SnapshotCorrupt(
                f"snapshot at position {self.position} fails its checksum", position=self.position
            )
        return self


def _position_and_update(item: RecordedEvent | tuple[int, bytes]) -> tuple[int, int, int, Any]:
    if isinstance(item, RecordedEvent):
        return item.position, item.version, item.time_us, item.data
    position, update = item
    return position, 0, 0, update


def _last_given(events: Sequence[RecordedEvent], name: str, current: int) -> int:
    """The value of ``name`` in the last event that carries one (not 0), else ``current``:
    what setting it per applied event, when given, leaves."""
    for e in reversed(events):
        v = getattr(e, name)
        if v:
            return v
    return current


class Document:
    """A loaded document: apply updates, answer state-vector diffs, take snapshots.

    ``position`` / ``version`` / ``time_us`` describe the last applied event that
    carried them. ``tail_events`` / ``tail_bytes`` count updates applied since the
    last snapshot (or load), for :class:`SnapshotPolicy`.
    """

    __slots__ = (
        "doc_id", "_ydoc", "position", "version", "time_us",
        "tail_events", "tail_bytes", "_base_bytes", "_unready", "_unchecked", "_raw",
    )

    def __init__(self, doc_id: str = "", *, ydoc: pycrdt.Doc | None = None) -> None:
        self.doc_id = doc_id
        self._ydoc = ydoc if ydoc is not None else pycrdt.Doc()
        # pycrdt's own document object, for applying updates without the Python
        # transaction wrapper (half the cost of a keystroke's apply): only while no one
        # else has seen the pycrdt Doc, so no observer or open transaction can be
        # waiting on that wrapper (see ``ydoc``), and only with the pycrdt we know.
        self._raw = _raw_doc(self._ydoc) if ydoc is None else None
        self.position = 0
        self.version = 0
        self.time_us = 0
        self.tail_events = 0
        self.tail_bytes = 0
        self._base_bytes = _BASE_BYTES
        # Updates whose dependencies have not arrived yet, merged into one. Kept
        # here rather than left to yrs alone: pycrdt 0.14 (yrs) drops an update that
        # arrives while another one is pending (one client's keystrokes 0, 2, 3, 1
        # give a document without 3), so out-of-order input would not converge.
        self._unready: bytes | None = None
        self._unchecked: list[bytes] = []  # applied since the last _settle

    # -- building ------------------------------------------------------------

    @classmethod
    def load(
        cls,
        snapshot: DocSnapshot | None,
        tail: Iterable[RecordedEvent | tuple[int, bytes]] = (),
        *,
        doc_id: str = "",
    ) -> Document:
        """Build a document from a snapshot (verified; may be None) plus the updates
        after it. Tail items are ``crdt.update`` events or ``(position, update)``
        pairs; items the snapshot already covers are skipped, other event types
        are ignored."""
        doc = cls(doc_id)
        floor = 0
        if snapshot is not None:
            snapshot.verify()
            doc.apply_update(snapshot.state)
            doc.position, doc.version, doc.time_us = (
                snapshot.position, snapshot.version, snapshot.time_us,
            )
            floor = snapshot.position
            doc.tail_events = doc.tail_bytes = 0
            doc._base_bytes = _BASE_BYTES + _STATE_FACTOR * len(snapshot.state)
        for item in tail:
            if isinstance(item, RecordedEvent) and item.type != CRDT_UPDATE:
                continue
            position, version, time_us, update = _position_and_update(item)
            if position and position <= floor:
                continue
            doc.apply_update(update, position=position, version=version, time_us=time_us)
        return doc

    def apply_update(
        self, update: bytes, *, position: int = 0, version: int = 0, time_us: int = 0
    ) -> None:
        """Apply one Yjs update; raise :class:`~engine.yupdates.InvalidUpdate` if it
        does not decode (the document is then unchanged)."""
        if type(update) is not bytes:
            update = as_bytes(update)
        if not update or update[0] >= 0x80:  # (check_header returns at once otherwise)
            check_header(update)
        raw = self._raw
        try:
            if raw is not None:
                # What pycrdt's Doc.apply_update does, without its wrapper objects: a
                # transaction that is committed (even when the update fails, as there)
                # and dropped.
                txn = raw.create_transaction()
                try:
                    raw.apply_update(txn, update)
                finally:
                    try:
                        txn.commit()
                    finally:
                        txn.drop()
            else:
                self._ydoc.apply_update(update)
        except BaseException as e:  # noqa: BLE001 - pyo3 panics are BaseExceptions
            if is_fatal(e):
                raise
            raise InvalidUpdate(f"cannot decode update: {e}", reason="undecodable") from e
        unchecked = self._unchecked
        unchecked.append(update)
        if self._unready is not None or len(unchecked) >= _CHECK_EVERY:
            self._settle()
        self.tail_events += 1
        self.tail_bytes += len(update)
        if position:
            self.position = position
        if version:
            self.version = version
        if time_us:
            self.time_us = time_us

    def apply_events(self, events: Sequence[RecordedEvent]) -> None:
        """``apply_update`` of each event's update, in order, with its position, version
        and time (``crdt.update`` events of this document, say the consecutive ones of a
        log page). The same document, counters and checks as one call per event, with
        one yrs transaction for all (a transaction per keystroke update was a third of
        its cost). If one fails to decode, the ones before it stay applied, as one by
        one, and InvalidUpdate is raised."""
        raw = self._raw
        if raw is None or self._unready is not None or len(events) < 2:
            # Something waits (then every apply re-tries it), or no raw document: one by one.
            for e in events:
                self.apply_update(e.data, position=e.position, version=e.version, time_us=e.time_us)
            return
        applied: list[bytes] = []
        failure: BaseException | None = None
        txn = raw.create_transaction()
        try:
            for e in events:
                update = e.data
                if type(update) is not bytes:
                    update = as_bytes(update)
                if not update or update[0] >= 0x80:  # (check_header returns at once otherwise)
                    check_header(update)
                try:
                    raw.apply_update(txn, update)
                except BaseException as exc:  # noqa: BLE001 - pyo3 panics are BaseExceptions
                    if is_fatal(exc):
                        raise
                    failure = exc
                    break
                applied.append(update)
        finally:
            try:
                txn.commit()
            finally:
                txn.drop()
            # The bookkeeping of apply_update, for the updates applied (also when a
            # later header check raised).
            if applied:
                self._unchecked.extend(applied)
                self.tail_events += len(applied)
                self.tail_bytes += sum(map(len, applied))
                done = events[: len(applied)]
                self.position = _last_given(done, "position", self.position)
                self.version = _last_given(done, "version", self.version)
                self.time_us = _last_given(done, "time_us", self.time_us)
                if len(self._unchecked) >= _CHECK_EVERY:
                    self._settle()
        if failure is not None:
            raise InvalidUpdate(f"cannot decode update: {failure}", reason="undecodable") from failure

    def _settle(self) -> None:
        """Find applied updates whose structs are not in the document (pending in
        yrs, or dropped by it), re-apply them merged, and keep what still waits.

        Checked in batches, not per update: integration is monotonic, so testing
        against the state vector at the end of a batch is as good as after each
        update, and costs one state-vector encoding per batch. While something
        waits, every apply re-tries it (the update just applied may be the one it
        was waiting for).
        """
        if not self._unchecked and self._unready is None:
            return
        ydoc = self._ydoc
        sv = ydoc.get_state()
        # The diff of an update against a state vector always keeps the delete set;
        # its first byte, the number of clients with structs, says whether any
        # struct is missing.
        waiting = [u for u in self._unchecked if pycrdt.get_update(u, sv)[0] != 0]
        self._unchecked.clear()
        if self._unready is not None:
            waiting.append(self._unready)
        if not waiting:
            return
        blob = waiting[0] if len(waiting) == 1 else pycrdt.merge_updates(*waiting)
        ydoc.apply_update(blob)
        rest = pycrdt.get_update(blob, ydoc.get_state())
        self._unready = None if rest[0] == 0 else rest

    @property
    def pending(self) -> bool:
        """Whether some applied update still waits for updates it depends on."""
        self._settle()
        return self._unready is not None

    # -- reading -------------------------------------------------------------

    @property
    def ydoc(self) -> pycrdt.Doc:
        """The underlying pycrdt document (read it; write only through updates)."""
        self._settle()
        self._raw = None  # it may get observers now: updates go through pycrdt's wrapper
        return self._ydoc

    def state_vector(self) -> bytes:
        self._settle()
        return self._ydoc.get_state()

    def diff(self, remote_state_vector: bytes | None = None) -> bytes:
        """Everything the holder of ``remote_state_vector`` lacks (sync step 2);
        the whole state when it is None or empty."""
        sv = EMPTY_STATE_VECTOR if remote_state_vector is None else remote_state_vector
        check_state_vector(as_bytes(sv, "state vector"))
        self._settle()
        with guard("state vector"):
            if self._unready is not None:
                return pycrdt.get_update(self.encode_state(), sv)
            return self._ydoc.get_update(sv)

    def encode_state(self) -> bytes:
        """Everything, as one update (including updates still waiting for dependencies)."""
        self._settle()
        state = self._ydoc.get_update()
        if self._unready is not None:
            state = pycrdt.merge_updates(state, self._unready)
        return state

    def text(self, name: str = "text") -> str:
        self._settle()
        return str(self._ydoc.get(name, type=pycrdt.Text))

    def map(self, name: str) -> dict[str, Any]:
        self._settle()
        return self._ydoc.get(name, type=pycrdt.Map).to_py() or {}

    def array(self, name: str) -> list[Any]:
        self._settle()
        return self._ydoc.get(name, type=pycrdt.Array).to_py() or []

    @property
    def approx_bytes(self) -> int:
        """A rough estimate of the resident size, for the cache's memory budget."""
        return self._base_bytes + _UPDATE_FACTOR * self.tail_bytes

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> DocSnapshot:
        """The full state at the current position; resets the tail counters."""
        state = self.encode_state()
        self.tail_events = self.tail_bytes = 0
        self._base_bytes = _BASE_BYTES + _STATE_FACTOR * len(state)
        return DocSnapshot.of(
            state, position=self.position, version=self.version, time_us=self.time_us
        )


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """Take a snapshot once the tail since the last one is long enough: loading is
    then one snapshot plus at most about ``tail_events_max`` updates."""

    tail_events_max: int = 1000
    tail_bytes_max: int = 1024 * 1024

    def due(self, doc: Document) -> bool:
        return doc.tail_events >= self.tail_events_max or doc.tail_bytes >= self.tail_bytes_max


def compact(updates: Iterable[bytes]) -> bytes:
    """Merge many updates into one (pycrdt ``merge_updates``); see engine.yupdates.merge."""
    return merge(updates)
