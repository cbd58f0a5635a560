"""Admin routes for the token lifecycle: ``POST /v1/admin/revocations`` (docs/security.md#tokens-and-transport).

A revocation is recorded as a ``token.revoked`` event on the caller's tenant's
``$revocations`` stream (critical), applied at once on this gateway and by every other
gateway's log follower; it is audited on ``$audit``.
"""
from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from syncline.engine.errors import ValidationError

from .auth import ADMIN
from .deps import gateway_of, principal_of, write_scope


@post("/admin/revocations", opt={"perm": ADMIN}, status_code=201,
      summary="Revoke a token (by jti) or every token of a user issued before a time")
async def revoke_tokens(request: Request, data: dict[str, Any]) -> Response:
    gw = gateway_of(request)
    p = principal_of(request)
    if not isinstance(data, dict):
        raise ValidationError("a revocation is an object: {jti} or {user, before}")
    tenant = await write_scope(request, data.get("tenant"))
    body = {k: data[k] for k in ("jti", "user", "before") if data.get(k) is not None}
    if "user" in body and "before" not in body:
        body["before"] = gw.clock.time()  # every token of the user issued until now
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValidationError("reason must be a string")
    revocation, position = await gw.revoke(tenant, body, p, reason=reason or "")
    await gw.audit(tenant, "audit.token-revoked", p, {**revocation.to_data(), "reason": (reason or "")[:500],
                                                      "position": position},
                   correlation_id=request.state.get("correlation_id"))
    return Response({"revoked": revocation.to_data(), "tenant": tenant, "position": position}, status_code=201)


V1 = [revoke_tokens]
