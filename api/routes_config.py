"""``GET /v1/config/resolution``: the records' resolution rules, as the server applies them.

Clients build their replica's :class:`~engine.records.ResolutionConfig` from this answer
(clientkit/rules.py), so a client predicts and folds merge fields exactly as the server
reconciles them, and the two cannot disagree. The rules are the same for every tenant
(one file per deployment), so any authenticated user with ``read`` may fetch them; the
answer names custom merge functions (``module:function``) but carries no code: a client
must be able to import the same module (docs/configuration.md#resolution).
"""
from __future__ import annotations

from litestar import Request, Response, get

from syncline.engine.records import rules_of

from .deps import gateway_of


@get("/config/resolution", summary="The resolution rules per collection and field (LWW, merge, manual)")
async def resolution_rules(request: Request) -> Response:
    gw = gateway_of(request)
    rules = rules_of(gw.records.config)
    return Response({"rules": rules, "version": 1}, headers={"Cache-Control": "private, max-age=60"})


V1 = [resolution_rules]
