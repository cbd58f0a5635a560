"""``GET /v1/config/resolution``: the records' resolution rules, for clients' replicas.

A client applies its own pending ops on top of what the server confirmed; to show the
right thing meanwhile (a merge function's result, a manual field's versions) it needs
the server's rules. The JSON is what ``dataclasses.asdict`` gives for a
``ResolutionConfig``'s policies (the shape clientkit-js ``ResolutionConfig`` reads):
``{"collections": {name: {"default": P, "fields": {field: P}, "strict": bool}},
"default_collection": {…} | null}`` with ``P = {"strategy", "merge"}``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from litestar import Request, get

from syncline.engine.records import CollectionPolicy

from .auth import READ
from .deps import gateway_of


def _collection(c: CollectionPolicy) -> dict[str, Any]:
    return {"default": dataclasses.asdict(c.default),
            "fields": {name: dataclasses.asdict(p) for name, p in c.fields.items()}, "strict": c.strict}


@get("/config/resolution", opt={"perm": READ}, summary="The records' resolution rules (per collection and field)")
async def resolution_config(request: Request) -> dict:
    config = gateway_of(request).records.config
    default = config.default_collection
    return {"collections": {name: _collection(config.collections[name]) for name in config.collections},
            "default_collection": _collection(default) if default is not None else None}


V1 = [resolution_config]
