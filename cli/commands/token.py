"""`syncline token`: mint a development JWT."""
from __future__ import annotations

import time

import click
import jwt

from syncline.api.settings import Settings
from syncline.engine.events import check_tenant


def mint(
    settings: Settings, tenant: str, user: str, roles: list[str], ttl_s: int, perms: list[str] | None = None
) -> str:
    check_tenant(tenant)
    claims = {"sub": user, "tenant": tenant, "roles": roles, "exp": int(time.time()) + ttl_s, "iat": int(time.time())}
    if perms:
        claims["perms"] = perms
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


@click.command()
@click.option("--tenant", required=True, help="Tenant id the token is scoped to.")
@click.option("--user", required=True, help="User id (the `sub` claim).")
@click.option("--role", "roles", multiple=True, default=("member",), show_default=True)
@click.option("--perm", "perms", multiple=True, help="Explicit permissions (the optional `perms` claim).")
@click.option("--ttl", "ttl_s", default=86400, show_default=True, help="Lifetime in seconds.")
def token(tenant: str, user: str, roles: tuple[str, ...], perms: tuple[str, ...], ttl_s: int) -> None:
    """Print a signed development token (HS256 with SYNCLINE_JWT_SECRET)."""
    click.echo(mint(Settings(), tenant, user, list(roles), ttl_s, list(perms) or None))


COMMANDS = [token]
