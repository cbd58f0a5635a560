"""Resolution configuration: which strategy settles concurrent writes, per collection and field.

Resolution is always field-level: fields written by only one side all apply, and
only a field written concurrently by both sides goes to its field's strategy:

- ``LWW``: the write with the greatest (HLC, client id, op id) wins;
- ``MERGE``: a registered merge function combines every write (counter, union, max...);
- ``MANUAL``: concurrent versions are all kept, the conflict is data, a person decides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from .errors import InvalidResolutionConfig
from .merges import MergeFunction, MergeRegistry

FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")


class Strategy(StrEnum):
    LWW = "lww"
    MANUAL = "manual"
    MERGE = "merge"


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    strategy: Strategy = Strategy.LWW
    merge: str | None = None  # the registered merge function, for Strategy.MERGE

    def __post_init__(self) -> None:
        if (self.strategy is Strategy.MERGE) != (self.merge is not None):
            raise InvalidResolutionConfig("a merge name goes with Strategy.MERGE, and only there")


LWW = FieldPolicy(Strategy.LWW)
MANUAL = FieldPolicy(Strategy.MANUAL)


def merged(name: str) -> FieldPolicy:
    return FieldPolicy(Strategy.MERGE, name)


@dataclass(frozen=True, slots=True)
class CollectionPolicy:
    default: FieldPolicy = LWW
    fields: Mapping[str, FieldPolicy] = field(default_factory=dict)
    strict: bool = False  # when True, fields not named in ``fields`` are rejected

    def policy(self, name: str) -> FieldPolicy | None:
        """The policy for a field, or None when the field is not allowed here."""
        p = self.fields.get(name)
        if p is not None:
            return p
        if self.strict or not FIELD_RE.match(name):
            return None
        return self.default


COLLECTION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")


class _AnyCollection(Mapping):
    """The named collections, and every other valid name with the default policy."""

    def __init__(self, named: Mapping[str, CollectionPolicy], default: CollectionPolicy) -> None:
        self._named, self._default = dict(named), default

    def __getitem__(self, name: str) -> CollectionPolicy:
        if name in self._named:
            return self._named[name]
        if isinstance(name, str) and COLLECTION_RE.match(name):
            return self._default
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._named or (isinstance(name, str) and COLLECTION_RE.match(name) is not None)

    def __iter__(self):
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)


class _Table(dict):
    """collection -> resolved rules; unnamed collections get the default's (when there is one)."""

    default_entry: tuple | None = None

    def __missing__(self, name: str) -> tuple:
        if self.default_entry is None or not isinstance(name, str) or not COLLECTION_RE.match(name):
            raise KeyError(name)
        return self.default_entry


@dataclass(frozen=True, slots=True)
class ResolutionConfig:
    """Collections by name. Building it checks every merge name against the registry.

    With ``default_collection``, every collection not named in ``collections`` is
    accepted with that policy (the gateway's default: any collection, every field LWW);
    without it, ops on an unnamed collection are rejected (``unknown_collection``).
    """

    collections: Mapping[str, CollectionPolicy]
    registry: MergeRegistry = field(default_factory=MergeRegistry.with_builtins)
    max_clock_skew_ms: int | None = None  # with reconcile(now_ms=...): reject ops this far ahead
    max_op_age_ms: int | None = None  # with reconcile(now_ms=...): reject ops this old
    # Vector-clock bounds (None: unchecked). ``max_clock_counter``: the greatest counter an
    # op's clock may carry; ``max_clock_entries``: how many nodes it may name;
    # ``causal_clocks``: an op may not claim more writes of another node than the record
    # has accepted (a client learns of others' writes from the server only). The gateway
    # turns all three on (api/ops.py, store/records_service.py).
    max_clock_counter: int | None = None
    max_clock_entries: int | None = None
    causal_clocks: bool = False
    default_collection: CollectionPolicy | None = None

    # collection -> (field -> (strategy, merge function or None), default or None if strict)
    _table: _Table = field(default_factory=_Table, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        named = dict(self.collections)
        if self.default_collection is not None:
            named["<any>"] = self.default_collection  # validated below like the others
        for cname, coll in named.items():
            for fname, p in [("<default>", coll.default), *coll.fields.items()]:
                if fname != "<default>" and not FIELD_RE.match(fname):
                    raise InvalidResolutionConfig(f"invalid field name {fname!r} in {cname!r}")
                if p.merge is not None and p.merge not in self.registry:
                    raise InvalidResolutionConfig(
                        f"{cname}.{fname}: no merge function {p.merge!r}", merge=p.merge
                    )
            # Resolved once here, so that the reconciler's per-field lookup is one dict get.
            per_field = {f: self._resolve(p) for f, p in coll.fields.items()}
            default = None if coll.strict else self._resolve(coll.default)
            self._table[cname] = (per_field, default)
        if self.default_collection is not None:
            self._table.default_entry = self._table.pop("<any>")
            object.__setattr__(self, "collections", _AnyCollection(self.collections, self.default_collection))

    def _resolve(self, p: FieldPolicy) -> tuple[Strategy, MergeFunction | None]:
        return (p.strategy, self.registry.get(p.merge) if p.merge is not None else None)

    def field_rule(self, collection: str, name: str) -> tuple[Strategy, MergeFunction | None] | None:
        """(strategy, merge function) for a field, or None when the field is not allowed."""
        try:
            entry = self._table[collection]
        except KeyError:
            return None
        rule = entry[0].get(name)
        if rule is not None:
            return rule
        if entry[1] is None or type(name) is not str or not FIELD_RE.match(name):
            return None
        return entry[1]

    def merge_function(self, name: str) -> MergeFunction:
        return self.registry.get(name)
