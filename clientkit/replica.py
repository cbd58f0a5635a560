"""The local records replica: confirmed server state plus an optimistic overlay.

Pure and synchronous (the session core owns one). Two layers:

- ``confirmed``: the fold of the ``record.patched`` events the server sent
  (``engine.records.fold_record_events``: exactly the code the server reconciles
  with, so after quiescence every replica holds the server's data byte for byte);
- ``pending``: the client's own ops not yet seen back in the log, in order. Reads
  (``get``) overlay them on the confirmed values, so the app sees its own edits at
  once, online or offline. An op leaves the overlay when its event arrives, when
  the server rejects it, or when an installed state (a snapshot, or the state saved
  before a restart) already contains it: its clock is covered by the record's clock.

The confirmed state can be saved (``export``) and loaded (``restore``): the session
core keeps it with its position in the queue's file, so a restart resumes from there.

Conflicts (manual fields holding concurrent versions) are reported once per
conflict id, with every version and its author, whichever replica saw them first.
"""
from __future__ import annotations

from datetime import datetime
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from syncline.engine.clocks import EMPTY_CLOCK, HLCTimestamp, VectorClock
from syncline.engine.codec import pack, unpack
from syncline.engine.events import Actor, RecordedEvent, Retention
from syncline.engine.records import (
    NO_INITIAL,
    RECORD_PATCHED,
    ClientOp,
    Conflict,
    LwwField,
    MergeField,
    MergeRegistry,
    Op,
    RecordsState,
    RecordState,
    ResolutionConfig,
    ResolveOp,
    Stamp,
    Strategy,
    collection_of,
    decode_record_state,
    encode_record_state,
    fold_record_events,
)

_BUILTINS = MergeRegistry.with_builtins()  # built once: registering checks the merge laws
_SNAPSHOT_STAMP = Stamp("snapshot", "~snapshot", "", HLCTimestamp(0, 0, "~snapshot"), EMPTY_CLOCK)


def event_from_wire(w: Mapping[str, Any]) -> RecordedEvent:
    """``RecordedEvent.to_wire()`` inverted (the fields the folds use are exact)."""
    actor = w.get("actor") or {}
    t = w.get("time")
    time_us = 0
    if type(t) is str or isinstance(t, str):
        time_us = _TIMES.get(t)
        if time_us is None:
            try:
                time_us = int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1_000_000)
            except ValueError:
                time_us = 0
            if len(_TIMES) >= 4_096:
                _TIMES.clear()
            _TIMES[t] = time_us
    return RecordedEvent(
        str(w.get("id", "")), str(w.get("tenant", "")), w["stream"], int(w.get("version", 0)),
        int(w["position"]), w["type"], int(w.get("schema", 1)), time_us,
        Actor(actor.get("user", ""), actor.get("client", "")), w.get("clock") or {}, w.get("data"),
        w.get("meta") or {}, Retention(w.get("retention", "standard")),
    )


# ISO time -> microseconds: every replica in a process parses the same event's time (ints: shared safely).
_TIMES: dict[str, int] = {}

# The same wire event object handed to many replicas (the simulator; a process fanning one
# frame out to several sessions) becomes one ``RecordedEvent``: keyed by (tenant, position),
# used only for that very object (its own dicts, as before), bounded.
_EVENTS: dict[tuple[Any, Any], tuple[Mapping[str, Any], RecordedEvent]] = {}
_EVENTS_MAX = 8_192


def _event_of(w: Mapping[str, Any]) -> RecordedEvent:
    key = (w.get("tenant"), w.get("position"))
    hit = _EVENTS.get(key)
    if hit is not None and hit[0] is w:
        return hit[1]
    ev = event_from_wire(w)
    if hit is None and len(_EVENTS) >= _EVENTS_MAX:
        del _EVENTS[next(iter(_EVENTS))]
    _EVENTS[key] = (w, ev)
    return ev


_NO_STATE = RecordsState()


class SharedFolds:
    """Fold steps shared by the replicas of one process that follow the same log (opt-in).

    A simulator runs ten replicas per sharing group, each folding the same events, in
    the same log order, onto what is the same record state. ``fold_record_events`` is a
    pure function of (state, event, registry) and states are immutable, so one fold can
    serve them all: a step is remembered by the event's log position as (the record
    state it was applied to, the result). A replica whose record *is* that state object
    (identity, not equality: no doubt about receipts or leaf types) takes the result
    instead of folding; the first replica to fold an event supplies the state the next
    step starts from, so the replicas following the log share one chain of states and
    each event is folded once per chain, not once per replica. A replica whose state
    diverged (it installed a snapshot or restored after a restart) has objects of its
    own: it misses and starts a chain of its own (``MAX_CHAINS`` per position, beyond
    that it folds alone). Records a replica never saw (``None``) are one shared state.

    Only for replicas reading ONE log (positions identify events); an entry also checks
    the event id and the registry. Bounded: the oldest positions are forgotten first
    (a replica that far behind just folds itself). Encoded records for ``export`` are
    shared the same way (by state object and version)."""

    MAX_CHAINS = 8

    __slots__ = ("limit", "small_limit", "_steps", "_blobs", "_conflicts", "_batches", "hits", "misses",
                 "batch_hits")

    # Bounds: a step is needed until the slowest replica of its chain passed it (a
    # partition of a few seconds, at ~2,000 events/s for a thousand clients); an export
    # blob or a conflict list only while the replicas holding that state take it
    # (within a save interval). Every entry keeps record states alive: no more.
    def __init__(self, limit: int = 32_768, small_limit: int = 4_096) -> None:
        self.limit = limit
        self.small_limit = small_limit
        # position -> (event id, registry, [(state applied to | None, resulting state), ...])
        self._steps: dict[int, tuple[str, MergeRegistry, list[tuple[RecordState | None, RecordState]]]] = {}
        self._blobs: dict[int, tuple[RecordState, int, bytes]] = {}  # id(state) -> (state, version, export blob)
        self._conflicts: dict[int, tuple[RecordState, tuple[Conflict, ...]]] = {}  # id(state) -> (state, conflicts)
        # id(events list) -> (the list, registry, [(state before, state after, changed, record
        # events), ...], its length): see ``batch``.
        self._batches: dict[int, tuple[list, MergeRegistry, list[tuple[RecordsState, RecordsState,
                                                                      dict[str, RecordState], list]], int]] = {}
        self.hits = 0
        self.misses = 0
        self.batch_hits = 0

    def batch(self, events: list, before: RecordsState, registry: MergeRegistry
              ) -> tuple[RecordsState, dict[str, RecordState], list] | None:
        """A whole batch folded before: (the state after it, the records it changed, its
        record events) if the very same events list (the server shares one list between
        the connections at one cursor) was applied to this very state object, else None.

        The same reasoning as the steps, one level up: the states are immutable and the
        fold is a pure function, so the replicas of a chain share their ``RecordsState``
        objects too (``remember`` hands a replica the one another replica built when their
        records are the same objects in the same order), and a replica that is in step
        with the others takes a batch in one lookup."""
        entry = self._batches.get(id(events))
        if entry is None or entry[0] is not events or entry[1] is not registry or entry[3] != len(events):
            return None
        for b, after, changed, recs in entry[2]:
            if b is before:
                self.batch_hits += 1
                return after, changed, recs
        return None

    def remember(self, events: list, before: RecordsState, merged: dict[str, RecordState],
                 changed: dict[str, RecordState], recs: list, registry: MergeRegistry) -> RecordsState:
        """The state after a batch this replica folded (``merged``: its records): the one
        another replica built from the same list, if it holds the same record objects in
        the same order, else a new one; remembered for the next replica at ``before``."""
        batches = self._batches
        entry = batches.get(id(events))
        if entry is None or entry[0] is not events or entry[1] is not registry or entry[3] != len(events):
            if _full(batches, self.small_limit):
                batches = self._batches = _newest(batches, self.small_limit)
            # Holds ``events``: its id cannot be reused while the entry lives. (Batches are
            # read-only, as the server's are; the length is checked all the same.)
            entry = batches[id(events)] = (events, registry, [], len(events))
        chains = entry[2]
        for _, after, _, _ in chains:
            theirs = after.records
            if len(theirs) == len(merged) and all(
                    v is w and (k is j or k == j) for (k, v), (j, w) in zip(merged.items(), theirs.items())):
                break
        else:
            after = RecordsState(MappingProxyType(merged))
        if len(chains) < self.MAX_CHAINS:
            chains.append((before, after, changed, recs))
        return after

    def blob(self, rec: RecordState, version: int, registry: MergeRegistry) -> bytes:
        hit = self._blobs.get(id(rec))
        if hit is not None and hit[0] is rec and hit[1] == version:
            return hit[2]
        b = pack([version, encode_record_state(rec, registry)])
        if _full(self._blobs, self.small_limit):
            self._blobs = _newest(self._blobs, self.small_limit)
        self._blobs[id(rec)] = (rec, version, b)  # holds ``rec``: its id cannot be reused meanwhile
        return b

    def conflicts(self, rec: RecordState) -> tuple[Conflict, ...]:
        """``rec.conflicts()``, once per shared state (immutable: so are its conflicts)."""
        hit = self._conflicts.get(id(rec))
        if hit is not None and hit[0] is rec:
            return hit[1]
        found = rec.conflicts()
        if _full(self._conflicts, self.small_limit):
            self._conflicts = _newest(self._conflicts, self.small_limit)
        self._conflicts[id(rec)] = (rec, found)  # holds ``rec``: its id cannot be reused meanwhile
        return found

    def fold(self, records: Mapping[str, RecordState], recs: list[Mapping[str, Any]],
             registry: MergeRegistry) -> dict[str, RecordState]:
        """The record states after folding the wire events ``recs`` (record.patched, log
        order) onto ``records``: stream -> new state, for the streams they touch, in the
        order they first appear."""
        steps = self._steps
        changed: dict[str, RecordState] = {}
        alone: dict[str, list[Mapping[str, Any]]] | None = None  # streams folded without sharing
        for w in recs:
            stream = w["stream"]
            if alone is not None and stream in alone:
                alone[stream].append(w)  # keep the stream's events in order
                continue
            prior = changed.get(stream)
            if prior is None:
                prior = records.get(stream)
            pos = w["position"]
            entry = steps.get(pos)
            if entry is not None and entry[0] == w.get("id") and entry[1] is registry:
                for before, after in entry[2]:
                    if before is prior:
                        changed[stream] = after
                        self.hits += 1
                        break
                else:
                    if len(entry[2]) >= self.MAX_CHAINS:
                        if alone is None:
                            alone = {}
                        alone[stream] = [w]
                        changed[stream] = prior  # holds the stream's place; replaced below
                        continue
                    after = changed[stream] = _fold_one(prior, stream, w, registry)
                    entry[2].append((prior, after))
                    self.misses += 1
                continue
            after = changed[stream] = _fold_one(prior, stream, w, registry)
            self.misses += 1
            if entry is None and _full(steps, self.limit):
                steps = self._steps = _newest(steps, self.limit)  # the oldest positions go
            steps[pos] = (w.get("id"), registry, [(prior, after)])
        if alone:
            for stream, ws in alone.items():
                prior = changed[stream]
                state = RecordsState(MappingProxyType({stream: prior})) if prior is not None else _NO_STATE
                changed[stream] = fold_record_events(state, [_event_of(w) for w in ws], registry,
                                                     shared_decode=True).records[stream]
        return changed


def _newest(entries: dict, keep: int) -> dict:
    """The newest ``keep`` entries of a bounded cache (insertion order), as a new dict.

    Caches here grow to ``keep`` plus an eighth and are then cut back in one go, not by
    one entry per insertion: a dict keeps the slots of deleted entries until it is
    rebuilt, so ``next(iter(d))`` after many deletions from the front walks all of them
    (it was ~30 us per fold miss at 1,000 clients)."""
    it = iter(entries.items())
    for _ in range(len(entries) - keep):
        next(it)
    return dict(it)


def _full(entries: dict, keep: int) -> bool:
    return len(entries) >= keep + (keep >> 3)


def _fold_one(prior: RecordState | None, stream: str, w: Mapping[str, Any], registry: MergeRegistry
              ) -> RecordState:
    """One event folded onto one record by the engine's own fold. (Folded once per chain:
    the per-process caches of decoded events and patches would only add work here.)"""
    state = RecordsState(MappingProxyType({stream: prior})) if prior is not None else _NO_STATE
    return fold_record_events(state, (event_from_wire(w),), registry).records[stream]


class RecordsReplica:
    __slots__ = ("config", "registry", "confirmed", "pending", "backup", "_seen_conflicts", "_version_base",
                 "_covered", "_dirty", "shared")

    def __init__(self, config: ResolutionConfig | None = None) -> None:
        self.config = config
        self.registry = config.registry if config is not None else _BUILTINS
        self.confirmed = RecordsState()
        self.pending: dict[str, Op] = {}  # op id -> op, in the order they were made
        self.backup: RecordsState | None = None  # the state a snapshot replaced
        self._seen_conflicts: set[str] | None = None
        # An installed state has no receipts: a record's version is the installed one
        # plus the ops folded since (``len(receipts)``).
        self._version_base: dict[str, int] | None = None
        # Pending ops an installed state already contained (op id -> stream): left the overlay.
        self._covered: dict[str, str] | None = None
        self._dirty: set[str] | None = None  # streams changed since the last ``export``
        # Set by a caller running many replicas of one log (the simulator): folds shared.
        self.shared: SharedFolds | None = None

    # -- reads ---------------------------------------------------------------

    def get(self, stream: str) -> dict[str, Any]:
        """The record as the user sees it: confirmed values with pending own ops on top."""
        rec = self.confirmed.records.get(stream)
        values = rec.values() if rec is not None else {}
        if not self.pending:
            return values
        for op in self.pending.values():
            if op.stream != stream:
                continue
            if type(op) is ResolveOp:
                if op.deleted:
                    values.pop(op.field, None)
                else:
                    values[op.field] = op.value
                continue
            for name, value in op.set.items():
                mf = self._merge_function(rec, stream, name)
                if mf is None:
                    values[name] = value
                else:
                    cur = values.get(name, NO_INITIAL)
                    values[name] = mf.combine(cur if cur is not None else NO_INITIAL, mf.validate(value))
            for name in op.delete:
                values.pop(name, None)
        return values

    def streams(self) -> list[str]:
        names = set(self.confirmed.records)
        names.update(op.stream for op in self.pending.values())
        return sorted(names)

    def confirmed_values(self) -> dict[str, dict[str, Any]]:
        return {s: r.values() for s, r in sorted(self.confirmed.records.items())}

    def clock(self, stream: str) -> VectorClock:
        rec = self.confirmed.records.get(stream)
        return rec.clock if rec is not None else EMPTY_CLOCK

    def version(self, stream: str) -> int:
        rec = self.confirmed.records.get(stream)
        n = rec.version if rec is not None else 0
        return n + self._version_base.get(stream, 0) if self._version_base else n

    def sees(self, op_id: str, stream: str) -> bool:
        """Whether reads include this op of ours: pending, folded, or in an installed state."""
        if op_id in self.pending or op_id in self.confirmed.get(stream).receipts:
            return True
        return self._covered is not None and op_id in self._covered

    def conflicts(self, stream: str | None = None) -> list[Conflict]:
        recs = [self.confirmed.get(stream)] if stream else self.confirmed.records.values()
        return [c for r in recs for c in r.conflicts()]

    def conflict(self, conflict_id: str) -> Conflict | None:
        for c in self.conflicts():
            if c.id == conflict_id:
                return c
        return None

    # -- writes --------------------------------------------------------------

    def local(self, op: Op) -> None:
        self.pending[op.op_id] = op

    def forget(self, op_id: str) -> None:
        self.pending.pop(op_id, None)

    def drop_pending(self) -> None:
        self.pending.clear()

    def apply_wire_events(self, events: Iterable[Mapping[str, Any]]) -> list[Conflict]:
        """Fold the ``record.patched`` events of a batch; returns conflicts not reported before."""
        if self.shared is not None:
            return self._apply_shared(events)
        recs = [_event_of(e) for e in events if e.get("type") == RECORD_PATCHED
                and str(e.get("stream", "")).startswith("rec/")]
        if not recs:
            return []
        # Decoded once per process, not once per replica (same result: payloads.decode_patch_cached).
        self.confirmed = fold_record_events(self.confirmed, recs, self.registry, shared_decode=True)
        return self._after_fold(recs)

    def _apply_shared(self, events: Iterable[Mapping[str, Any]]) -> list[Conflict]:
        """``apply_wire_events`` through ``shared``: the same states, most of them folded by
        another replica (``SharedFolds``)."""
        shared = self.shared
        before = self.confirmed
        hit = shared.batch(events, before, self.registry) if type(events) is list else None
        if hit is not None:
            self.confirmed, changed, recs = hit
        else:
            recs = [e for e in events
                    if e.get("type") == RECORD_PATCHED and str(e.get("stream", "")).startswith("rec/")]
            if not recs:
                return []
            records = before.records
            changed = shared.fold(records, recs, self.registry)  # in the order streams first appear
            merged = records.copy()  # (the proxy's own dict, copied in C)
            merged.update(changed)  # as the fold does: known streams keep their place, new ones follow
            if type(events) is list:
                self.confirmed = shared.remember(events, before, merged, changed, recs, self.registry)
            else:
                self.confirmed = RecordsState(MappingProxyType(merged))
        if self._dirty is not None:
            self._dirty.update(changed)
        pending = self.pending
        if pending:
            for e in recs:
                d = e.get("data")
                op_id = d.get("op") if type(d) is dict or isinstance(d, Mapping) else None
                if op_id is not None:
                    pending.pop(op_id, None)
        new: list[Conflict] = []
        conflicts = self.shared.conflicts
        for rec in changed.values():
            found = conflicts(rec)
            if found:
                new.extend(self._unseen(found))
        return new

    def _after_fold(self, recs: list[RecordedEvent]) -> list[Conflict]:
        if self._dirty is not None:
            self._dirty.update(e.stream for e in recs)
        if self.pending:
            for e in recs:
                d = e.data
                op_id = d.get("op") if type(d) is dict or isinstance(d, Mapping) else None
                if op_id is not None:
                    self.pending.pop(op_id, None)
        return self._new_conflicts(dict.fromkeys(e.stream for e in recs))

    def _new_conflicts(self, streams: Iterable[str]) -> list[Conflict]:
        new = []
        for stream in streams:
            new.extend(self._unseen(self.confirmed.get(stream).conflicts()))
        return new

    def _unseen(self, conflicts: Iterable[Conflict]) -> list[Conflict]:
        """The conflicts not reported before (each id once), now marked reported."""
        new = []
        for c in conflicts:
            if self._seen_conflicts is None:
                self._seen_conflicts = set()
            if c.id not in self._seen_conflicts:
                self._seen_conflicts.add(c.id)
                new.append(c)
        return new

    def install_snapshot(self, content: Mapping[str, Any], *, keep_pending: bool) -> None:
        """Replace the confirmed state with a snapshot's records, in one step.

        The previous state is kept in ``backup``. Each record body carries its field
        state (``state``: stamps, clocks, accumulators), so merging continues exactly as
        if every event had been folded. A body with values only (an older server) gets
        the weakest stamp: any later write supersedes those values.
        """
        records: dict[str, RecordState] = {}
        versions: dict[str, int] = {}
        for stream, body in content.items():
            if (type(body) is not dict and not isinstance(body, Mapping)) or body.get("kind") != "record":
                continue
            state = body.get("state")
            if isinstance(state, Mapping):
                records[stream] = decode_record_state(stream, state, self.registry)
            else:
                records[stream] = self._from_values(stream, body.get("values") or {})
            v = body.get("version")
            versions[stream] = v if type(v) is int and v > 0 else 0
        self.backup = self.confirmed
        if not keep_pending:
            self.pending.clear()
        self._install(records, versions)

    def _from_values(self, stream: str, values: Mapping[str, Any]) -> RecordState:
        fields: dict[str, Any] = {}
        for name, value in values.items():
            mf_name = self._merge_name(stream, name)
            if mf_name is not None:
                # Wire form back to the accumulator's own (a set arrives as a list).
                acc = self.registry.get(mf_name).validate(value)
                fields[name] = MergeField(mf_name, acc, EMPTY_CLOCK, _SNAPSHOT_STAMP)
            else:
                fields[name] = LwwField(_SNAPSHOT_STAMP, value, False, EMPTY_CLOCK)
        return RecordState(stream, MappingProxyType(fields))

    def _install(self, records: dict[str, RecordState], versions: dict[str, int]) -> None:
        """The confirmed state becomes ``records``; pending ops it already contains leave
        the overlay (or reads would show them twice: a counter would double)."""
        self.confirmed = RecordsState(MappingProxyType(records))
        self._version_base = versions or None
        self._covered = None
        if self._dirty is not None:
            self._dirty = set(records)
        if not self.pending:
            return
        for op_id, op in list(self.pending.items()):
            rec = records.get(op.stream)
            # An accepted op's clock is part of its record's clock (the merge of every
            # accepted op's). A client's ticks on a record only grow, so a covered op was
            # accepted, or rejected while a later one of ours was accepted: either way it
            # is no longer the overlay's to show.
            if rec is not None and op.clock <= rec.clock:
                del self.pending[op_id]
                if self._covered is None:
                    self._covered = {}
                self._covered[op_id] = op.stream

    # -- persistence ---------------------------------------------------------

    def track_changes(self) -> None:
        """Start remembering which records changed, for incremental ``export``."""
        if self._dirty is None:
            self._dirty = set(self.confirmed.records)

    def export(self, *, everything: bool = False) -> dict[str, bytes]:
        """Records changed since the last export (all with ``everything``), encoded:
        stream -> bytes for ``restore``. Requires ``track_changes`` first."""
        streams = self.confirmed.records if everything or self._dirty is None else self._dirty
        out = {}
        for stream in streams:
            rec = self.confirmed.records.get(stream)
            if rec is not None:
                if self.shared is not None:  # replicas sharing states share their encoding too
                    out[stream] = self.shared.blob(rec, self.version(stream), self.registry)
                else:
                    out[stream] = pack([self.version(stream), encode_record_state(rec, self.registry)])
        self._dirty = set()
        return out

    def restore(self, saved: Mapping[str, bytes]) -> None:
        """Load records saved by ``export`` (the confirmed state a restart resumes from)."""
        records: dict[str, RecordState] = {}
        versions: dict[str, int] = {}
        for stream, blob in saved.items():
            version, state = unpack(blob)
            records[stream] = decode_record_state(stream, state, self.registry)
            versions[stream] = version
        self._install(records, versions)
        self._dirty = set()

    def _merge_name(self, stream: str, name: str) -> str | None:
        cfg = self.config
        coll = collection_of(stream)
        if cfg is None or coll is None:
            return None
        rule = cfg.field_rule(coll, name)
        if rule is None or rule[0] is not Strategy.MERGE:
            return None
        return rule[1].name  # type: ignore[union-attr]

    def _merge_function(self, rec: RecordState | None, stream: str, name: str):
        if rec is not None:
            f = rec.fields.get(name)
            if type(f) is MergeField:
                return self.registry.get(f.merge)
        mf_name = self._merge_name(stream, name)
        return self.registry.get(mf_name) if mf_name is not None else None


__all__ = ["ClientOp", "RecordsReplica", "ResolveOp", "SharedFolds", "event_from_wire"]
