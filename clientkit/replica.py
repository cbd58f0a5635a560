"""The local records replica: confirmed server state plus an optimistic overlay.

Pure and synchronous (the session core owns one). Two layers:

- ``confirmed``: the fold of the ``record.patched`` events the server sent
  (``engine.records.fold_record_events``: exactly the code the server reconciles
  with, so after quiescence every replica holds the server's data byte for byte);
- ``pending``: the client's own ops not yet seen back in the log, in order. Reads
  (``get``) overlay them on the confirmed values, so the app sees its own edits at
  once, online or offline. An op leaves the overlay when its event arrives, or when
  the server rejects it.

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
    fold_record_events,
)

_BUILTINS = MergeRegistry.with_builtins()  # built once: registering checks the merge laws
_SNAPSHOT_STAMP = Stamp("snapshot", "~snapshot", "", HLCTimestamp(0, 0, "~snapshot"), EMPTY_CLOCK)


def event_from_wire(w: Mapping[str, Any]) -> RecordedEvent:
    """``RecordedEvent.to_wire()`` inverted (the fields the folds use are exact)."""
    actor = w.get("actor") or {}
    t = w.get("time")
    time_us = 0
    if isinstance(t, str):
        try:
            time_us = int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1_000_000)
        except ValueError:
            time_us = 0
    return RecordedEvent(
        str(w.get("id", "")), str(w.get("tenant", "")), w["stream"], int(w.get("version", 0)),
        int(w["position"]), w["type"], int(w.get("schema", 1)), time_us,
        Actor(actor.get("user", ""), actor.get("client", "")), w.get("clock") or {}, w.get("data"),
        w.get("meta") or {}, Retention(w.get("retention", "standard")),
    )


class RecordsReplica:
    __slots__ = ("config", "registry", "confirmed", "pending", "backup", "_seen_conflicts")

    def __init__(self, config: ResolutionConfig | None = None) -> None:
        self.config = config
        self.registry = config.registry if config is not None else _BUILTINS
        self.confirmed = RecordsState()
        self.pending: dict[str, Op] = {}  # op id -> op, in the order they were made
        self.backup: RecordsState | None = None  # the state a snapshot replaced
        self._seen_conflicts: set[str] | None = None

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
        return rec.version if rec is not None else 0

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
        recs = [event_from_wire(e) for e in events if e.get("type") == RECORD_PATCHED
                and str(e.get("stream", "")).startswith("rec/")]
        if not recs:
            return []
        self.confirmed = fold_record_events(self.confirmed, recs, self.registry)
        if self.pending:
            for e in recs:
                op_id = e.data.get("op") if isinstance(e.data, Mapping) else None
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

        The previous state is kept in ``backup``. The snapshot carries values, not
        per-field clocks, so each value becomes a write that any later write supersedes
        (an empty clock and the smallest HLC); merge fields keep their accumulated value.
        """
        records: dict[str, RecordState] = {}
        for stream, body in content.items():
            if not isinstance(body, Mapping) or body.get("kind") != "record":
                continue
            fields: dict[str, Any] = {}
            for name, value in (body.get("values") or {}).items():
                mf_name = self._merge_name(stream, name)
                if mf_name is not None:
                    fields[name] = MergeField(mf_name, value, EMPTY_CLOCK, _SNAPSHOT_STAMP)
                else:
                    fields[name] = LwwField(_SNAPSHOT_STAMP, value, False, EMPTY_CLOCK)
            records[stream] = RecordState(stream, MappingProxyType(fields))
        self.backup = self.confirmed
        self.confirmed = RecordsState(MappingProxyType(records))
        if not keep_pending:
            self.pending.clear()

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
