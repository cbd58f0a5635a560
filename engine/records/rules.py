"""Resolution rules as plain data: the form a configuration file holds and the server publishes.

A :class:`~engine.records.ResolutionConfig` holds Python objects (policies, merge
functions); the *rules* are the same thing as JSON-able data, so that they can be
written in ``syncline.toml``, served by ``GET /v1/config/resolution`` and rebuilt on a
client, which then folds and predicts exactly as the server reconciles::

    {"collections": {"notes": {"default": "lww", "strict": false,
                               "fields": {"title": "manual", "likes": "counter"}}},
     "default_collection": {"default": "lww", "strict": false, "fields": {}},   # or null
     "custom_merges": ["my_merges:longest"]}

A field's policy is one string: ``"lww"``, ``"manual"``, or the name of a merge
function: a built-in (``counter``, ``set_union``, ``max``) or ``module:function`` for
a custom one. A custom function is imported by whoever builds the config (the server
from its file, the client kit from the published rules), so its module must be
importable on both sides; it is marked with :func:`custom_merge`, which gives the
samples its laws are checked on. Importing is I/O, so it is not done here: callers pass
the imported objects to :func:`register_custom_merges`.

Errors are :class:`InvalidResolutionConfig` with a ``key`` detail naming the rule's path
(``resolution.collections.notes.fields.title``), so a file loader can point at its line.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from .config import COLLECTION_RE, FIELD_RE, LWW, MANUAL, CollectionPolicy, FieldPolicy, ResolutionConfig, merged
from .errors import InvalidResolutionConfig, MergeFunctionRejected
from .merges import NO_INITIAL, MergeFunction, MergeRegistry, _identity

CUSTOM_REF_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")
MARK = "syncline_merge"  # the attribute :func:`custom_merge` sets on a function
COLLECTION_KEYS = frozenset({"default", "strict", "fields"})
SPEC_KEYS = frozenset({"collections", "default_collection", "custom_merges"})


def custom_merge(*, samples: Iterable[Any], validate: Callable[[Any], Any] = _identity,
                 encode: Callable[[Any], Any] = _identity, initial: Any = NO_INITIAL,
                 idempotent: bool = False) -> Callable[[Callable], Callable]:
    """Mark ``fn(acc, operand) -> acc`` as a merge function a configuration may name as
    ``module:function``. ``samples`` (2 to 24 operands) are what its laws (commutative,
    associative) are checked on when a server or client registers it."""
    options = {"samples": tuple(samples), "validate": validate, "encode": encode, "initial": initial,
               "idempotent": idempotent}

    def mark(fn: Callable) -> Callable:
        setattr(fn, MARK, options)
        return fn

    return mark


def is_custom_ref(name: str) -> bool:
    return CUSTOM_REF_RE.match(name) is not None


def _bad(message: str, key: str, **details: Any) -> InvalidResolutionConfig:
    return InvalidResolutionConfig(f"{key}: {message}", key=key, **details)


def policy_of(value: Any, key: str) -> FieldPolicy:
    """``"lww"`` / ``"manual"`` / a merge function's name, as a :class:`FieldPolicy`."""
    if not isinstance(value, str) or not value:
        raise _bad(f"a field policy is a string ('lww', 'manual' or a merge function), not {value!r}", key)
    if value == "lww":
        return LWW
    if value == "manual":
        return MANUAL
    return merged(value)


def name_of(policy: FieldPolicy) -> str:
    return policy.merge if policy.merge is not None else str(policy.strategy)


def custom_refs(spec: Mapping[str, Any]) -> list[str]:
    """The ``module:function`` merges the rules name (what must be imported before building)."""
    found: set[str] = set()
    colls = spec.get("collections") or {}
    tables = [*(colls.values() if isinstance(colls, Mapping) else ()), spec.get("default_collection") or {}]
    for coll in tables:
        if not isinstance(coll, Mapping):
            continue
        fields = coll.get("fields") or {}
        for value in [coll.get("default"), *(fields.values() if isinstance(fields, Mapping) else ())]:
            if isinstance(value, str) and ":" in value:
                found.add(value)
    return sorted(found)


def register_custom_merges(registry: MergeRegistry, imported: Mapping[str, Any]) -> None:
    """Register each imported ``module:function`` (marked with :func:`custom_merge`) under
    that name, its laws checked on its samples. Names already registered are skipped."""
    for ref, fn in imported.items():
        if ref in registry:
            continue
        options = getattr(fn, MARK, None)
        if not callable(fn) or not isinstance(options, dict):
            raise InvalidResolutionConfig(
                f"{ref} is not a merge function: decorate it with @custom_merge(samples=[...]) "
                "(syncline.engine.records.custom_merge)", merge=ref)
        mf = MergeFunction(ref, fn, options["validate"], options["encode"], options["initial"], options["idempotent"])
        try:
            registry.register_function(mf, options["samples"])
        except MergeFunctionRejected as e:
            raise InvalidResolutionConfig(f"{ref}: {e.message}", merge=ref, reason=e.code) from None


def _collection(raw: Any, key: str, registry: MergeRegistry) -> CollectionPolicy:
    if not isinstance(raw, Mapping):
        raise _bad("a collection's rules are a table (default, strict, fields)", key)
    unknown = sorted(set(raw) - COLLECTION_KEYS)
    if unknown:
        raise _bad(f"unknown key {unknown[0]!r} (expected one of {', '.join(sorted(COLLECTION_KEYS))})",
                   f"{key}.{unknown[0]}")
    strict = raw.get("strict", False)
    if not isinstance(strict, bool):
        raise _bad(f"'strict' is true or false, not {strict!r}", f"{key}.strict")
    default = _checked(policy_of(raw.get("default", "lww"), f"{key}.default"), f"{key}.default", registry)
    fields_raw = raw.get("fields", {})
    if not isinstance(fields_raw, Mapping):
        raise _bad("'fields' is a table of field = policy", f"{key}.fields")
    fields: dict[str, FieldPolicy] = {}
    for fname, value in fields_raw.items():
        fkey = f"{key}.fields.{fname}"
        if not isinstance(fname, str) or not FIELD_RE.match(fname):
            raise _bad(f"invalid field name {fname!r}", fkey)
        fields[fname] = _checked(policy_of(value, fkey), fkey, registry)
    return CollectionPolicy(default=default, fields=fields, strict=strict)


def _checked(policy: FieldPolicy, key: str, registry: MergeRegistry) -> FieldPolicy:
    if policy.merge is not None and policy.merge not in registry:
        hint = ("a custom merge is named module:function" if ":" not in policy.merge
                else "its module was not imported and registered")
        raise _bad(f"no merge function {policy.merge!r} (built-ins: {', '.join(registry.names())}; {hint})",
                   key, merge=policy.merge)
    return policy


def config_from_rules(spec: Mapping[str, Any], registry: MergeRegistry | None = None, *,
                      prefix: str = "resolution", **bounds: Any) -> ResolutionConfig:
    """Build the :class:`ResolutionConfig` the rules describe. ``registry`` must already
    hold the custom merges the rules name (:func:`register_custom_merges`). ``bounds``
    are ResolutionConfig's clock options (max_clock_skew_ms, ...)."""
    registry = registry if registry is not None else MergeRegistry.with_builtins()
    if not isinstance(spec, Mapping):
        raise _bad("the resolution rules are a table", prefix)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise _bad(f"unknown key {unknown[0]!r}", f"{prefix}.{unknown[0]}")
    colls_raw = spec.get("collections") or {}
    if not isinstance(colls_raw, Mapping):
        raise _bad("'collections' is a table of collection name = rules", f"{prefix}.collections")
    collections: dict[str, CollectionPolicy] = {}
    for cname, raw in colls_raw.items():
        ckey = f"{prefix}.collections.{cname}"
        if not isinstance(cname, str) or not COLLECTION_RE.match(cname):
            raise _bad(f"invalid collection name {cname!r}", ckey)
        collections[cname] = _collection(raw, ckey, registry)
    default_raw = spec.get("default_collection")
    default = None if default_raw is None else _collection(default_raw, f"{prefix}.default_collection", registry)
    return ResolutionConfig(collections, registry=registry, default_collection=default, **bounds)


def _collection_rules(coll: CollectionPolicy) -> dict[str, Any]:
    return {"default": name_of(coll.default), "strict": coll.strict,
            "fields": {f: name_of(p) for f, p in sorted(coll.fields.items())}}


def rules_of(config: ResolutionConfig) -> dict[str, Any]:
    """The rules ``config`` applies, as JSON-able data (:func:`config_from_rules` inverts it)."""
    named = getattr(config.collections, "_named", config.collections)
    rules: dict[str, Any] = {
        "collections": {c: _collection_rules(p) for c, p in sorted(named.items())},
        "default_collection": (None if config.default_collection is None
                               else _collection_rules(config.default_collection)),
    }
    rules["custom_merges"] = custom_refs(rules)
    return rules


def same_rules(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rule sets resolve every field alike (``custom_merges`` is derived)."""
    def core(r: Mapping[str, Any]) -> tuple:
        return (r.get("collections") or {}, r.get("default_collection"))
    return core(a) == core(b)
