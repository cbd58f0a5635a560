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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pycrdt

from .errors import IntegrityViolation
from .events import RecordedEvent
from .ynews import DeleteSetIndex
from .ynews import brings_news as news_in
from .yparse import (
    ClientKey,
    ParsedUpdate,
    Unparsed,
    client_id,
    delete_piece,
    parse_delete_set,
    parse_state_vector,
    parse_update,
    single_delete,
)
from .ypending import NeverFits, PendingIndex, Plan
from .yupdates import (
    EMPTY_STATE_VECTOR,
    InvalidUpdate,
    PendingOverflow,
    UpdateNeverFits,
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
_get_state = pycrdt.get_state
_PARSED_AHEAD = 512  # updates parsed ahead of their apply (brings_news), kept
_DS_CHECK_MAX = 256  # delete sets up to this size are checked for ids not there yet


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


def _never_fits(e: NeverFits) -> UpdateNeverFits:
    client, clock = e.ids[0]
    return UpdateNeverFits(
        f"update can never be integrated ({e.reason}: client {client_id(client)} "
        f"clock {clock})",
        reason=e.reason, client=client_id(client), clock=clock,
    )


def _last_given(events: Sequence[RecordedEvent], name: str, current: int) -> int:
    """The value of ``name`` in the last event that carries one (not 0), else ``current``:
    what setting it per applied event, when given, leaves."""
    for e in reversed(events):
        v = getattr(e, name)
        if v:
            return v
    return current


@dataclass(frozen=True, slots=True)
class PendingLimits:
    """The bound on what a document holds waiting for updates it depends on: waiting
    parts (one client's structs of one update, or one delete range) and their bytes.
    Past it, :meth:`Document.apply_update` raises :class:`PendingOverflow`."""

    max_parts: int = 10_000
    max_bytes: int = 16 * 1024 * 1024


class Document:
    """A loaded document: apply updates, answer state-vector diffs, take snapshots.

    ``position`` / ``version`` / ``time_us`` describe the last applied event that
    carried them. ``tail_events`` / ``tail_bytes`` count updates applied since the
    last snapshot (or load), for :class:`SnapshotPolicy`.

    Updates may arrive in any order. One whose dependencies are missing waits, held by
    the document (not by yrs: see :mod:`engine.ypending`) and indexed by the id it
    waits for; an update that arrives is applied with exactly what it unblocks.

    Two ways to apply, chosen by :attr:`limits` (settable at any time):

    - ``None`` (the default; replays, projections, time travel): the log is trusted.
      Updates go to yrs as they come and are checked in batches (cheapest for in-order
      input); what the check finds waiting is held, and while anything is held each
      update is first cut into what is ready and what waits. An update that can never
      fit is dropped (counted in :attr:`refused`); nothing bounds what waits.
    - a :class:`PendingLimits` (live documents): every update is checked before yrs
      sees it. :meth:`apply_update` raises :class:`~engine.yupdates.UpdateNeverFits`
      for an update that can never integrate and
      :class:`~engine.yupdates.PendingOverflow` when holding it would pass the limits;
      the document is then unchanged and goes on. :meth:`admit` answers the same
      before the update is appended to the log.

    Both give the same document once nothing waits. While something does, they can
    differ in one way: yrs, given a struct whose own client's earlier clocks are
    missing but whose neighbours are there, integrates it and leaves a hole; the
    checked way waits for the earlier clocks, as Yjs does.

    :meth:`brings_news` says whether an update would change the document, from the
    update alone and a delete-set index kept as updates are applied.
    """

    __slots__ = (
        "_base_bytes", "_dsi", "_parsed", "_pile", "_raw", "_synced", "_unchecked", "_ydoc",
        "doc_id", "limits", "position", "refused", "tail_bytes", "tail_events", "time_us",
        "version",
    )

    def __init__(
        self,
        doc_id: str = "",
        *,
        ydoc: pycrdt.Doc | None = None,
        limits: PendingLimits | None = None,
    ) -> None:
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
        self.limits = limits
        self.refused = 0  # updates (or parts) dropped because they can never integrate
        # What waits, indexed by what it waits for (engine.ypending). Its state vector
        # mirrors yrs's while ``_synced``; updates applied unchecked make it stale.
        self._pile = PendingIndex({})
        self._synced = ydoc is None
        # Updates given to yrs unchecked since the last _settle (the trusting mode).
        self._unchecked: list[bytes] = []
        # The delete-set index for brings_news: built on first use, then kept.
        self._dsi: DeleteSetIndex | None = None
        # Updates parsed by brings_news/admit, for the apply_update that follows.
        self._parsed: dict[bytes, tuple[ParsedUpdate, bytes] | None] = {}

    # -- building ------------------------------------------------------------

    @classmethod
    def load(
        cls,
        snapshot: DocSnapshot | None,
        tail: Iterable[RecordedEvent | tuple[int, bytes]] = (),
        *,
        doc_id: str = "",
        limits: PendingLimits | None = None,
    ) -> Document:
        """Build a document from a snapshot (verified; may be None) plus the updates
        after it. Tail items are ``crdt.update`` events or ``(position, update)``
        pairs; items the snapshot already covers are skipped, other event types
        are ignored. The log is trusted (see :class:`Document`); ``limits`` apply to
        the updates applied after loading."""
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
        doc.limits = limits
        return doc

    # -- applying ------------------------------------------------------------

    def apply_update(
        self, update: bytes, *, position: int = 0, version: int = 0, time_us: int = 0, checked: bool = False
    ) -> None:
        """Apply one Yjs update (or hold it until what it depends on arrives).

        ``checked``: cut it against the waiting index now, even without limits and with
        nothing waiting. For an update :meth:`admit` has just read (a gateway's own
        writer's): its parse is reused and the index stays in step with yrs, so the next
        ``admit`` needs no state-vector reads. Without it, an update goes to yrs
        unchecked and is checked with the next batch (cheaper for runs of log updates,
        which nothing admitted).

        Raises :class:`~engine.yupdates.InvalidUpdate` if it does not decode, and with
        :attr:`limits` set, :class:`~engine.yupdates.UpdateNeverFits` or
        :class:`~engine.yupdates.PendingOverflow` (both InvalidUpdate); the document is
        then unchanged (and its counters too)."""
        if type(update) is not bytes:
            update = as_bytes(update)
        if not update or update[0] >= 0x80:  # (check_header returns at once otherwise)
            check_header(update)
        if self.limits is None and not self._pile.parts and not checked:
            # Trusting, nothing waits: straight to yrs, checked with the next batch.
            self._yapply(update)
            self._synced = False
            unchecked = self._unchecked
            unchecked.append(update)
            if len(unchecked) >= _CHECK_EVERY:
                self._settle()
        else:
            self._apply_checked(update)
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
        i, n = 0, len(events)
        while i < n:
            raw = self._raw
            if raw is None or self.limits is not None or self._pile.parts or n - i < 2:
                # Something waits (then each update is cut), checked mode, or no raw
                # document: one by one.
                e = events[i]
                self.apply_update(e.data, position=e.position, version=e.version, time_us=e.time_us)
                i += 1
                continue
            i += self._apply_run(raw, events, i)

    def _apply_run(self, raw: Any, events: Sequence[RecordedEvent], start: int) -> int:
        """Apply ``events[start:]`` in one yrs transaction, checking every _CHECK_EVERY
        updates as one by one would (inside the transaction), until one fails or a check
        finds updates that wait (taken in after the transaction). Returns how many
        events were applied."""
        applied: list[bytes] = []
        failure: BaseException | None = None
        late: list[bytes] = []
        txn = raw.create_transaction()
        try:
            for k in range(start, len(events)):
                update = events[k].data
                if type(update) is not bytes:
                    update = as_bytes(update)
                if not update or update[0] >= 0x80:  # (check_header returns at once otherwise)
                    check_header(update)
                try:
                    raw.apply_update(txn, update)
                except BaseException as exc:  # pyo3 panics are BaseExceptions
                    if is_fatal(exc):
                        raise
                    failure = exc
                    break
                applied.append(update)
                self._unchecked.append(update)
                if len(self._unchecked) >= _CHECK_EVERY:
                    late = self._find_late(raw.get_state(txn))
                    if late:
                        break
        finally:
            try:
                txn.commit()
            finally:
                txn.drop()
            # The bookkeeping of apply_update, for the updates applied (also when a
            # later header check raised).
            if applied:
                self._synced = False
                self.tail_events += len(applied)
                self.tail_bytes += sum(map(len, applied))
                done = events[start : start + len(applied)]
                self.position = _last_given(done, "position", self.position)
                self.version = _last_given(done, "version", self.version)
                self.time_us = _last_given(done, "time_us", self.time_us)
        if late:
            self._take_late(late)
        if failure is not None:
            raise InvalidUpdate(f"cannot decode update: {failure}", reason="undecodable") from failure
        return len(applied)

    def _yapply(self, update: bytes) -> None:
        """Give yrs one update; InvalidUpdate if it fails."""
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
        except BaseException as e:  # pyo3 panics are BaseExceptions
            if is_fatal(e):
                raise
            raise InvalidUpdate(f"cannot decode update: {e}", reason="undecodable") from e

    def _feed(self, pieces: list[bytes]) -> None:
        """Give yrs pieces that were held and are ready now. One that fails (yrs refuses
        to integrate it, which its decoding did not show) is dropped and counted."""
        for piece in pieces:
            try:
                self._yapply(piece)
            except InvalidUpdate:
                self.refused += 1
                self._resync()

    def _sv(self) -> bytes:
        raw = self._raw
        if raw is not None:
            txn = raw.create_transaction()
            try:
                return raw.get_state(txn)
            finally:
                try:
                    txn.commit()
                finally:
                    txn.drop()
        return self._ydoc.get_state()

    def _resync(self) -> None:
        """Make the waiting index's state vector yrs's again (and feed what that frees)."""
        pile = self._pile
        sv = pile.sv
        moved: list[ClientKey] = []
        for client, clock in parse_state_vector(self._sv()).items():
            if clock != sv.get(client, 0):
                sv[client] = clock
                moved.append(client)
        self._synced = True
        if moved and pile.parts:
            self._feed(pile.wake(moved))

    def _parse(self, update: bytes) -> tuple[ParsedUpdate, bytes] | None:
        """The structure of an update, and the bytes it describes: the update itself, or
        yrs's re-encoding of it when this engine does not read the original (a client
        listed twice, a non-canonical integer). None when yrs decodes it but this
        engine cannot follow it (content kinds no Yjs client writes). InvalidUpdate when
        yrs does not decode it either."""
        cache = self._parsed
        if cache and update in cache:
            return cache.pop(update)
        try:
            return parse_update(update), update
        except Unparsed:
            pass
        with guard("update"):
            again = pycrdt.get_update(update, EMPTY_STATE_VECTOR)
        try:
            return parse_update(again), again
        except Unparsed:
            return None

    def _parse_ahead(self, update: bytes) -> tuple[ParsedUpdate, bytes] | None:
        """``_parse``, kept for the apply_update that usually follows (the gateway asks
        brings_news, appends, then applies)."""
        parsed = self._parse(update)
        if self.limits is not None or self._pile.parts:  # (else apply does not parse)
            cache = self._parsed
            if len(cache) >= _PARSED_AHEAD:
                del cache[next(iter(cache))]
            cache[update] = parsed
        return parsed

    def _apply_checked(self, update: bytes) -> None:
        """Apply an update cut into what is ready (fed to yrs now) and what waits
        (held, indexed by what it waits for); feed whatever that unblocks."""
        if self._unchecked:
            self._settle()
        if not self._synced:
            self._resync()
        parsed = self._parse(update)
        if parsed is None:
            if self.limits is not None:
                raise InvalidUpdate("update uses content this engine does not follow",
                                    reason="unsupported")
            self._yapply(update)  # as before: yrs alone, unchecked (it holds what waits)
            self._synced = False
            return
        plan = self._plan(*parsed)
        if plan is None:
            return
        # What is ready now, then what that unblocks.
        try:
            if plan.whole:
                self._yapply(plan.src)
            else:
                for piece in plan.struct_pieces():
                    self._yapply(piece)
                if plan.ready_dels:
                    self._yapply(delete_piece(plan.ready_dels))
        except InvalidUpdate:
            self._resync()  # (yrs may have taken part of it)
            raise
        if self._dsi is not None:
            self._dsi.add_all(plan.parsed.deletes)
        more = self._pile.commit(plan)
        if more:
            self._feed(more)

    def _plan(
        self, parsed: ParsedUpdate, src: bytes, *, arriving: bool = True, dry: bool = False
    ) -> Plan | None:
        """Plan an update, or refuse it: raise (with limits, for an update arriving now)
        or return None (dropped). ``dry``: only asking (nothing is remembered)."""
        pile = self._pile
        limits = self.limits if arriving else None
        try:
            plan = pile.plan(parsed, src)
        except NeverFits as e:
            if not dry:
                pile.refuse(e.ids)
            if limits is not None:
                raise _never_fits(e) from None
            self.refused += 1
            return None
        if plan.waits:
            # Something will wait: it must decode in yrs (it is fed later, in pieces,
            # to a document that cannot refuse it then), and fit the limits.
            with guard("update"):
                _get_state(src)
            if limits is not None and (
                pile.parts + plan.hold_parts > limits.max_parts
                or pile.nbytes + plan.hold_bytes > limits.max_bytes
            ):
                raise PendingOverflow(
                    f"document already holds {pile.parts} waiting parts "
                    f"({pile.nbytes} bytes); this update would add {plan.hold_parts}",
                    reason="pending_overflow", waiting=pile.parts, waiting_bytes=pile.nbytes,
                )
        return plan

    def _settle(self) -> None:
        """Check the updates given to yrs unchecked: any whose structs are not all in
        the document, or whose deletions name ids it lacks, is cut and held as if it
        had just arrived (yrs may hold it too, or have dropped it: feeding it again
        when ready is harmless). Checked in batches, not per update: integration is
        monotonic, so testing against the state vector at the end of a batch is as good
        as after each update, and costs one state-vector encoding per batch."""
        if not self._unchecked:
            return
        late = self._find_late(self._sv())
        if late:
            self._take_late(late)

    def _find_late(self, sv_bytes: bytes) -> list[bytes]:
        """Take the unchecked updates; return those (or their delete sets) that are not
        all in a document at ``sv_bytes``."""
        unchecked = self._unchecked
        self._unchecked = []
        dsi = self._dsi
        late: list[bytes] = []
        deleting: list[bytes] = []  # delete sets (as updates without structs) to look at
        get_update = pycrdt.get_update
        for u in unchecked:
            if u[0] == 0:  # no structs: a delete set only
                if u[-1] != 0:  # (0: none, or its last range is empty)
                    deleting.append(u)
                continue
            # The diff against a state vector keeps the delete set; its first byte, the
            # number of clients with structs, says whether any struct is missing.
            rem = get_update(u, sv_bytes)
            if rem[0] != 0:
                late.append(u)
            elif u[-1] != 0:
                deleting.append(rem)
        if deleting:
            sv = parse_state_vector(sv_bytes)
            for ds in deleting:
                one = single_delete(ds)
                if one is not None and dsi is None:  # (one range: a delete keystroke)
                    if one[1] + one[2] > sv.get(one[0], 0):
                        late.append(ds)
                    continue
                if dsi is None and len(ds) > _DS_CHECK_MAX:
                    # A large delete set (a snapshot, a peer's whole state) is not read
                    # here: its deletions of ids not there yet, if any, stay with yrs
                    # (which applies them when the ids come, but not in encode_state).
                    continue
                try:
                    deletes = parse_delete_set(ds, 1)
                except Unparsed:
                    continue
                if dsi is not None:
                    dsi.add_all(deletes)
                if any(k + n > sv.get(c, 0) for c, rs in deletes.items() for k, n in rs):
                    late.append(ds)  # deletes ids not (yet) there: held until they are
        return late

    def _take_late(self, late: list[bytes]) -> None:
        """Cut and hold (or feed, when ready after all) updates found late."""
        dsi = self._dsi
        self._resync()
        for u in late:
            parsed = self._parse(u)
            if parsed is None:
                continue  # left to yrs
            plan = self._plan(*parsed, arriving=False)  # (applied already: never raises)
            if plan is None:
                continue
            if plan.whole:
                self._feed([plan.src])
            else:
                self._feed(plan.struct_pieces())
                if plan.ready_dels:
                    self._feed([delete_piece(plan.ready_dels)])
            if dsi is not None:
                dsi.add_all(plan.parsed.deletes)
            more = self._pile.commit(plan)
            if more:
                self._feed(more)

    @property
    def pending(self) -> bool:
        """Whether some applied update still waits for updates it depends on."""
        self._settle()
        return self._pile.parts > 0

    @property
    def waiting(self) -> tuple[int, int]:
        """(parts, bytes) held waiting for updates they depend on."""
        self._settle()
        return self._pile.parts, self._pile.nbytes

    # -- news ------------------------------------------------------------------

    def brings_news(self, update: bytes) -> bool:
        """Whether applying ``update`` would change this document: structs it lacks
        (past its state vector and not among what it holds waiting) or deletions it
        lacks. Decided from the update's own structs and delete set; the document's
        delete set is read once, on the first call, and then kept up to date as
        updates are applied. True when unsure (a redundant update is harmless, a
        dropped one is not). Raises InvalidUpdate if the update does not decode."""
        if type(update) is not bytes:
            update = as_bytes(update)
        if not update or update[0] >= 0x80:
            check_header(update)
        self._settle()
        dsi = self._delete_index()
        pile = self._pile
        if self._synced:
            # The state vector is at hand (updates are checked as they come): read the
            # update here, and keep what was read for its apply.
            parsed = self._parse_ahead(update)
            if parsed is None:
                return True
            return news_in(parsed[0], pile.sv, dsi, pile.held if pile.parts else None)
        # Else (updates applied unchecked since): what the update has past yrs's state
        # vector, and its delete set, as yrs cuts them.
        with guard("update"):
            rem = pycrdt.get_update(update, self._sv())
        if rem[0] != 0 and not pile.parts:
            return True
        if len(rem) == 2 and rem[0] == rem[1] == 0:
            return False
        try:
            parsed_rem = parse_update(rem)
        except Unparsed:
            return True
        return news_in(parsed_rem, {}, dsi, pile.held if pile.parts else None)

    def admit(self, update: bytes) -> bool:
        """What the gateway asks before it appends a peer's update: False when it brings
        nothing new (nothing to append); True when it does and :meth:`apply_update`
        would take it now; raises what apply_update would raise instead (InvalidUpdate,
        and with :attr:`limits`, UpdateNeverFits or PendingOverflow). Changes nothing."""
        if not self.brings_news(update):
            return False
        if type(update) is not bytes:
            update = as_bytes(update)
        if not self._synced:
            self._resync()
        parsed = self._parse_ahead(update)
        if parsed is None:
            if self.limits is not None:
                raise InvalidUpdate("update uses content this engine does not follow",
                                    reason="unsupported")
            return True
        self._plan(*parsed, dry=True)
        return True

    def _delete_index(self) -> DeleteSetIndex:
        dsi = self._dsi
        if dsi is None:
            # The document's own delete set: its diff against its own state vector.
            sv = self._sv()
            raw = self._raw
            if raw is not None:
                txn = raw.create_transaction()
                try:
                    ds = raw.get_update(txn, sv)
                finally:
                    try:
                        txn.commit()
                    finally:
                        txn.drop()
            else:
                ds = self._ydoc.get_update(sv)
            try:
                dsi = DeleteSetIndex.of(parse_delete_set(ds, 1))
            except Unparsed:  # (yrs's own encoding)
                dsi = DeleteSetIndex()
            dsi.add_all(self._pile.waiting_deletes())
            self._dsi = dsi
        return dsi

    # -- reading -------------------------------------------------------------

    @property
    def ydoc(self) -> pycrdt.Doc:
        """The underlying pycrdt document (read it; write only through updates)."""
        self._settle()
        self._raw = None  # it may get observers now: updates go through pycrdt's wrapper
        return self._ydoc

    def state_vector(self) -> bytes:
        self._settle()
        return self._sv()

    def diff(self, remote_state_vector: bytes | None = None) -> bytes:
        """Everything the holder of ``remote_state_vector`` lacks (sync step 2);
        the whole state when it is None or empty."""
        sv = EMPTY_STATE_VECTOR if remote_state_vector is None else remote_state_vector
        check_state_vector(as_bytes(sv, "state vector"))
        self._settle()
        with guard("state vector"):
            if self._pile.parts:
                return pycrdt.get_update(self.encode_state(), sv)
            return self._ydoc.get_update(sv)

    def encode_state(self) -> bytes:
        """Everything, as one update (including updates still waiting for dependencies)."""
        self._settle()
        state = self._ydoc.get_update()
        if self._pile.parts:
            state = pycrdt.merge_updates(state, *self._pile.waiting_pieces())
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
        return self._base_bytes + _UPDATE_FACTOR * self.tail_bytes + self._pile.nbytes

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
