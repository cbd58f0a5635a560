"""Token revocation: recorded in the log, followed by every gateway.

A revocation is a ``token.revoked`` event on the tenant's ``$revocations`` stream
(retention ``critical``: kept forever), written by ``POST /v1/admin/revocations`` or
``syncline token revoke``. It names either

- a token id: ``{"jti": "..."}`` — that token is refused from now on; or
- a user and a time: ``{"user": "U", "before": T}`` — every token of U (in that tenant)
  whose ``iat`` is before T (seconds since the epoch) is refused; a token without
  ``iat`` cannot show it is newer, so it is refused too.

Every gateway loads the revocations at start and follows new ones from the log (the
realtime follower, api/follower.py): the verifier refuses revoked tokens
(``token_revoked``), and open connections holding a matching token are closed with
4401 ``token_revoked``. The state here is a pure fold of those events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from syncline.engine.errors import ValidationError
from syncline.engine.filters import EventFilter

if TYPE_CHECKING:
    from .auth import Principal

REVOCATIONS_STREAM = "$revocations"
TOKEN_REVOKED = "token.revoked"
REVOCATION_FILTER = EventFilter(streams=(REVOCATIONS_STREAM,), types=(TOKEN_REVOKED,))
JTI_MAX = 200


@dataclass(frozen=True, slots=True)
class Revocation:
    tenant: str
    jti: str | None = None
    user: str | None = None
    before: float | None = None

    def matches(self, p: Principal) -> bool:
        if p.tenant != self.tenant:
            return False
        if self.jti is not None:
            return p.jti == self.jti
        return p.user == self.user and (p.iat is None or self.before is None or p.iat < self.before)

    def to_data(self) -> dict[str, Any]:
        if self.jti is not None:
            return {"jti": self.jti}
        return {"user": self.user, "before": self.before}


def revocation_from(tenant: str, data: Any) -> Revocation:
    """A revocation from a request body or an event's data; ValidationError if it names
    neither a token id nor a user (or both)."""
    if not isinstance(data, Mapping):
        raise ValidationError("a revocation is an object: {jti} or {user, before}")
    jti, user, before = data.get("jti"), data.get("user"), data.get("before")
    if jti is not None:
        if user is not None or before is not None:
            raise ValidationError("revoke either a token id (jti) or a user's tokens (user, before), not both")
        if not isinstance(jti, str) or not 0 < len(jti) <= JTI_MAX:
            raise ValidationError(f"jti must be a string of 1-{JTI_MAX} characters")
        return Revocation(tenant, jti=jti)
    if not isinstance(user, str) or not 0 < len(user) <= 200:
        raise ValidationError("name a token id (jti) or a user (user, before)")
    if not isinstance(before, (int, float)) or isinstance(before, bool) or not 0 <= before < 2**40:
        raise ValidationError("before must be a time in seconds since the epoch")
    return Revocation(tenant, user=user, before=float(before))


class Revocations:
    """What the log says is revoked: token ids per tenant, and per (tenant, user) the latest
    "issued before" cut-off. ``revoked`` is two dict lookups (it runs on every verify)."""

    def __init__(self) -> None:
        self.jtis: set[tuple[str, str]] = set()
        self.before: dict[tuple[str, str], float] = {}
        self.applied = 0  # revocation events folded in (a metric)

    def add(self, r: Revocation) -> bool:
        """Fold one revocation in; whether it revoked anything more than before."""
        if r.jti is not None:
            key = (r.tenant, r.jti)
            if key in self.jtis:
                return False
            self.jtis.add(key)
        elif r.user is not None and r.before is not None:
            key = (r.tenant, r.user)
            if self.before.get(key, float("-inf")) >= r.before:
                return False
            self.before[key] = r.before
        else:
            return False
        self.applied += 1
        return True

    def revoked(self, p: Principal) -> bool:
        if p.jti and (p.tenant, p.jti) in self.jtis:
            return True
        if self.before:
            cut = self.before.get((p.tenant, p.user))
            if cut is not None and (p.iat is None or p.iat < cut):
                return True
        return False
