"""`syncline token`: mint a development JWT."""
from __future__ import annotations

import time

import click
import jwt

from syncline.api.settings import Settings
from syncline.engine.access import parse_scopes
from syncline.engine.errors import ValidationError
from syncline.engine.events import check_tenant


def mint(
    settings: Settings, tenant: str, user: str, roles: list[str], ttl_s: int, perms: list[str] | None = None,
    scopes: list[str] | None = None,
) -> str:
    check_tenant(tenant)
    claims: dict = {"sub": user, "tenant": tenant, "roles": roles, "exp": int(time.time()) + ttl_s,
                    "iat": int(time.time())}
    if perms:
        claims["perms"] = perms
    if scopes:
        parse_scopes(scopes)  # the gateway would refuse the token (token_malformed): refuse to mint it
        claims["scopes"] = scopes
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


@click.command()
@click.option("--tenant", required=True, help="Tenant id the token is scoped to.")
@click.option("--user", required=True, help="User id (the `sub` claim).")
@click.option("--role", "roles", multiple=True, default=("member",), show_default=True)
@click.option("--perm", "perms", multiple=True, help="Explicit permissions (the optional `perms` claim).")
@click.option("--scope", "scopes", multiple=True,
              help="Narrow the token to streams by pattern: read:<pattern> or write:<pattern> (write implies "
                   "read; * matches any characters), e.g. --scope 'read:doc/handbook/*' --scope write:room/support. "
                   "Repeatable; without it the token covers its whole tenant.")
@click.option("--ttl", "ttl_s", default=86400, show_default=True, help="Lifetime in seconds.")
def token(tenant: str, user: str, roles: tuple[str, ...], perms: tuple[str, ...], scopes: tuple[str, ...],
          ttl_s: int) -> None:
    """Print a signed development token (HS256 with SYNCLINE_JWT_SECRET)."""
    try:
        click.echo(mint(Settings(), tenant, user, list(roles), ttl_s, list(perms) or None, list(scopes) or None))
    except ValidationError as e:
        raise click.BadParameter(e.message, param_hint="--scope") from e


COMMANDS = [token]
