"""JWT verification (PyJWT) and permissions from claims.

A token carries ``sub`` (user), ``tenant``, ``roles``, ``exp`` and optionally ``perms``
and ``scopes``. Permissions are the union of what the roles grant and the explicit
``perms``; ``scopes`` narrows them to streams by pattern (engine/access.py, the one rule
every path applies; docs/security.md#access).
HS256 with ``SYNCLINE_JWT_SECRET`` by default; RS256/ES256 with
``SYNCLINE_JWT_PUBLIC_KEY`` (PEM) when ``SYNCLINE_JWT_ALGORITHM`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import jwt

from syncline.engine.access import (  # noqa: F401  (READ ... KNOWN_PERMS: re-exported, the routes import them here)
    ADMIN,
    CROSS_TENANT,
    DEFAULT_ROLE_TABLE,
    KNOWN_PERMS,
    READ,
    SYSTEM_READ,
    WRITE,
    RoleTable,
    Scopes,
    parse_scopes,
)
from syncline.engine.errors import InvalidTenant, ValidationError
from syncline.engine.events import check_tenant

from .errors import Forbidden, TokenBadSignature, TokenExpired, TokenMalformed, TokenMissing, TokenRevoked
from .revocations import Revocations
from .settings import Settings, check_jwt_secret

# Permissions and the default roles live in engine/access.py; syncline.toml's [roles] table
# changes them (Settings.roles, docs/configuration.md#roles).
ROLE_PERMS: RoleTable = DEFAULT_ROLE_TABLE

ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    tenant: str
    roles: frozenset[str]
    perms: frozenset[str]
    exp: int
    client: str = ""
    jti: str = ""  # the token's id (``jti`` claim), for revocation by id
    iat: float | None = None  # when it was issued (``iat``), for "every token of U issued before T"
    scopes: Scopes | None = None  # None: the whole tenant (engine/access.py)

    def can(self, perm: str) -> bool:
        return perm in self.perms

    def require(self, perm: str) -> None:
        if perm not in self.perms:
            raise Forbidden(f"the token lacks the {perm!r} permission", needed=perm)


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.leeway = settings.jwt_leeway_s
        self.roles: RoleTable = getattr(settings, "roles", None) or DEFAULT_ROLE_TABLE
        # Revoked token ids and per-user "issued before" cut-offs, fed from the log's
        # ``$revocations`` streams by the gateway (api/revocations.py).
        self.revocations = Revocations()
        if self.algorithm in ASYMMETRIC:
            if not settings.jwt_public_key:
                raise ValueError(f"{self.algorithm} needs SYNCLINE_JWT_PUBLIC_KEY (PEM)")
            key = settings.jwt_public_key
            if not key.lstrip().startswith("-----"):
                with open(key) as f:  # a path to the PEM file
                    key = f.read()
            self.key: Any = key
        elif self.algorithm.startswith("HS"):
            check_jwt_secret(settings.jwt_secret)
            self.key = settings.jwt_secret
        else:
            raise ValueError(f"unsupported JWT algorithm {self.algorithm!r}")

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise TokenMissing("no token: send Authorization: Bearer <jwt> (or ?token= on WebSockets)")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                leeway=self.leeway,
                options={"require": ["exp", "sub", "tenant"]},
            )
        except jwt.ExpiredSignatureError as e:
            raise TokenExpired("the token has expired") from e
        except jwt.InvalidSignatureError as e:
            raise TokenBadSignature("the token signature does not verify") from e
        except jwt.InvalidAlgorithmError as e:
            raise TokenBadSignature(f"tokens must be signed with {self.algorithm}") from e
        except jwt.PyJWTError as e:
            raise TokenMalformed(f"malformed token: {e}") from e
        principal = principal_from_claims(claims, self.roles)
        if self.revocations.revoked(principal):
            raise TokenRevoked("the token was revoked")
        return principal


def principal_from_claims(claims: Mapping[str, Any], roles: RoleTable = DEFAULT_ROLE_TABLE) -> Principal:
    """The principal a verified token's claims describe; ``roles``: what each role grants."""
    table = roles
    user, tenant = claims.get("sub"), claims.get("tenant")
    roles, perms = claims.get("roles", []), claims.get("perms", [])
    if not isinstance(user, str) or not user or len(user) > 200:
        raise TokenMalformed("claim 'sub' must be a non-empty string")
    try:
        check_tenant(tenant)
    except InvalidTenant as e:
        raise TokenMalformed("claim 'tenant' is not a valid tenant id") from e
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenMalformed("claim 'roles' must be a list of strings")
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise TokenMalformed("claim 'perms' must be a list of strings")
    try:
        scopes = parse_scopes(claims.get("scopes"))
    except ValidationError as e:
        raise TokenMalformed(f"claim 'scopes': {e.message}") from e
    role_set, granted = _role_and_perm_sets(tuple(roles), tuple(perms), table)
    jti, iat = claims.get("jti"), claims.get("iat")
    if jti is not None and (not isinstance(jti, str) or len(jti) > 200):
        raise TokenMalformed("claim 'jti' must be a string of at most 200 characters")
    if iat is not None and (not isinstance(iat, (int, float)) or isinstance(iat, bool)):
        raise TokenMalformed("claim 'iat' must be a number")
    return Principal(user, tenant, role_set, granted, int(claims["exp"]), jti=jti or "",
                     iat=float(iat) if iat is not None else None, scopes=scopes)


# Every WebSocket connection keeps its Principal for its whole life, and almost all of them
# carry one of a few role lists: share the frozensets instead of building two per token
# (~0.43 KB each). Bounded, so tokens with unusual role lists cannot grow it.
_INTERN_MAX_ROLES = 32


def _role_and_perm_sets(roles: tuple[str, ...], perms: tuple[str, ...], table: RoleTable
                        ) -> tuple[frozenset[str], frozenset[str]]:
    if len(roles) + len(perms) > _INTERN_MAX_ROLES:
        return _build_sets(roles, perms, table)
    # Normalized key: order and repeats in the claims do not change the sets.
    return _interned_sets(tuple(sorted(set(roles))), tuple(sorted({p for p in perms if p in KNOWN_PERMS})), table)


@lru_cache(maxsize=256)
def _interned_sets(roles: tuple[str, ...], perms: tuple[str, ...], table: RoleTable
                   ) -> tuple[frozenset[str], frozenset[str]]:
    return _build_sets(roles, perms, table)


def _build_sets(roles: tuple[str, ...], perms: tuple[str, ...], table: RoleTable
                ) -> tuple[frozenset[str], frozenset[str]]:
    granted: set[str] = set()
    for r in roles:
        granted |= table.get(r, frozenset())
    granted |= {p for p in perms if p in KNOWN_PERMS}
    # Permissions are a subset of KNOWN_PERMS: a handful of distinct sets, shared by every role list.
    perm_set = frozenset(granted)
    return frozenset(roles), _PERM_SETS.setdefault(perm_set, perm_set)


_PERM_SETS: dict[frozenset[str], frozenset[str]] = {}


def bearer_token(headers: Mapping[str, str], query: Mapping[str, Any] | None = None) -> str | None:
    """The token from ``Authorization: Bearer``, else (WebSockets) from ``?token=``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise TokenMalformed("the Authorization header must be 'Bearer <jwt>'")
        return value.strip()
    if query is not None:
        token = query.get("token")
        if isinstance(token, list):
            token = token[0] if token else None
        return token or None
    return None
