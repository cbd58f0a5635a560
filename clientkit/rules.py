"""The server's resolution rules, loaded by the client kit (``GET /v1/config/resolution``).

A replica predicts merge fields (a counter shows the sum at once) and folds the log with
the same :class:`~engine.records.ResolutionConfig` the server reconciles with. Instead
of asking the application to build an identical one by hand, the client fetches the
rules the server publishes and builds the config from them (engine/records/rules.py).

Custom merge functions travel by name (``module:function``): the client imports the
same module, so it must be installed (or on ``PYTHONPATH``) where the client runs; a
client that cannot import it refuses to sync (:class:`MergeNotImportable`) rather than
fold the log differently from the server.

A ``config=`` passed to the client is a *check*, not an override: when it resolves any
field differently from the published rules, loading fails with
:class:`ResolutionMismatch`, because a client that disagrees with the server shows
values the server will not keep.
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Mapping

import httpx

from syncline.engine.errors import SynclineError
from syncline.engine.records import (
    MergeRegistry,
    ResolutionConfig,
    config_from_rules,
    custom_refs,
    register_custom_merges,
    rules_of,
    same_rules,
)

from .errors import ClientKitError, RemoteProtocolError, TransportError

RULES_PATH = "/v1/config/resolution"
META_KEY = "resolution_rules"  # the last rules loaded, kept in the queue for offline restarts


class ResolutionMismatch(ClientKitError):
    """The ``config`` given to the client resolves some field differently from the server."""

    code = "resolution_mismatch"


class MergeNotImportable(ClientKitError):
    """The server's rules name a custom merge function (module:function) this client cannot import."""

    code = "merge_not_importable"


async def fetch_rules(base_url: str, token: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The rules the server publishes. Raises :class:`TransportError` when it cannot be reached."""
    url = base_url.rstrip("/") + RULES_PATH
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            r = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as e:
        raise TransportError(f"cannot load the resolution rules: {type(e).__name__}") from None
    if r.status_code != 200:
        raise TransportError(f"GET {RULES_PATH} answered {r.status_code}", status=r.status_code)
    try:
        body = r.json()
        rules = body["rules"]
    except (ValueError, KeyError, TypeError):
        raise RemoteProtocolError(f"GET {RULES_PATH}: not a rules document") from None
    if not isinstance(rules, dict):
        raise RemoteProtocolError(f"GET {RULES_PATH}: not a rules document")
    return rules


def config_from_published(rules: Mapping[str, Any]) -> ResolutionConfig:
    """The ResolutionConfig the published rules describe, custom merges imported."""
    registry = MergeRegistry.with_builtins()
    imported: dict[str, Any] = {}
    for ref in custom_refs(rules):
        module, _, attr = ref.partition(":")
        try:
            imported[ref] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise MergeNotImportable(
                f"the server resolves with the custom merge function {ref!r}, which this client cannot import "
                f"({type(e).__name__}: {e}); install its module or put it on PYTHONPATH", merge=ref) from None
    try:
        register_custom_merges(registry, imported)
        return config_from_rules(rules, registry)
    except SynclineError as e:
        raise RemoteProtocolError(f"the server's resolution rules are invalid here: {e.message}") from None


def check_agrees(local: ResolutionConfig, rules: Mapping[str, Any]) -> None:
    """Raise :class:`ResolutionMismatch` when ``local`` differs from the published rules."""
    mine = rules_of(local)
    if not same_rules(mine, rules):
        raise ResolutionMismatch(
            "the config passed to the client differs from the server's resolution rules "
            f"({RULES_PATH}); drop config= to use the server's",
            local=mine, server=dict(rules))


def stored_rules(queue: Any) -> dict[str, Any] | None:
    raw = queue.get_meta(META_KEY)
    try:
        return json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def store_rules(queue: Any, rules: Mapping[str, Any]) -> None:
    queue.set_meta({META_KEY: json.dumps(rules, sort_keys=True)})
