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

from engine.clocks import EMPTY_CLOCK, HLCTimestamp, VectorClock
from engine.events import Actor, RecordedEvent, Retention
from engine.records import (
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
from engine.codec import pack, unpack

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


class RecordsReplica:
    __slots__ = ("config", "registry", "confirmed", "pending", "backup", "_seen_conflicts", "_version_base",
                 "_covered", "_dirty")

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
        recs = [_event_of(e) for e in events if e.get("type") == RECORD_PATCHED
                and str(e.get("stream", "")).startswith("rec/")]
        if not recs:
            return []
        # Decoded once per process, not once per replica (same result: payloads.decode_patch_cached).
        self.confirmed = fold_record_events(self.confirmed, recs, self.registry, shared_decode=True)
        if self._dirty is not None:
            self._dirty.update(e.stream for e in recs)
        if self.pending:
            for e in recs:
                d = e.data
                op_id = d.get("op") if type(d) is dict or isinstance(d, Mapping) else None
                if op_id is not None:
                    self.pending.pop(op_id, None)
        new = []
        for stream in dict.fromkeys(e.stream for e in recs):
            for c in self.confirmed.get(stream).conflicts():
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


__all__ = ["ClientOp", "RecordsReplica", "ResolveOp", "event_from_wire"]
