"""`syncline token`: mint a development JWT; `syncline token revoke`: revoke tokens.

Minted tokens carry ``jti`` (a random id) and ``iat`` (when they were issued), so they
can be revoked one by one (``--jti``) or all of a user's issued before a time
(``--user U --before T``). A revocation is an event in the log (``$revocations``, kept
forever) that every running gateway follows (docs/security.md#tokens-and-transport).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import click
import jwt

from syncline.api.settings import Settings, check_jwt_secret
from syncline.engine.access import parse_scopes
from syncline.engine.errors import SynclineError, ValidationError
from syncline.engine.events import check_tenant


def mint(
    settings: Settings, tenant: str, user: str, roles: list[str], ttl_s: int, perms: list[str] | None = None,
    scopes: list[str] | None = None,
) -> str:
    check_tenant(tenant)
    check_jwt_secret(settings.jwt_secret)
    now = int(time.time())
    claims: dict = {"sub": user, "tenant": tenant, "roles": roles, "exp": now + ttl_s, "iat": now,
                    "jti": uuid.uuid4().hex}
    if perms:
        claims["perms"] = perms
    if scopes:
        parse_scopes(scopes)  # the gateway would refuse the token (token_malformed): refuse to mint it
        claims["scopes"] = scopes
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def _settings(config_file: str | None) -> Settings:
    """The settings of ``--config`` / SYNCLINE_CONFIG (the roles and the secret may come from it)."""
    from syncline.api.config_file import ConfigError, load_settings

    try:
        return load_settings(config_file)
    except ConfigError as e:
        raise click.ClickException("invalid configuration:\n" + "\n".join(str(p) for p in e.problems)) from None


def _roles_source(config_file: str | None) -> str:
    from syncline.api.config_file import config_path

    path = config_path(config_file)
    return f" (from {path})" if path else " (the defaults; a configuration file's [roles] may add others)"


def valid_roles(config_file: str | None = None) -> list[str]:
    """The roles a token may carry: the configuration's [roles] table, or the defaults."""
    from syncline.api.config_file import ConfigError, config_path, load_file
    from syncline.engine.access import DEFAULT_ROLE_TABLE, role_table

    path = config_path(config_file)
    if path is None:
        return list(DEFAULT_ROLE_TABLE)
    try:
        return list(role_table(load_file(path).roles))
    except (ConfigError, OSError):
        return list(DEFAULT_ROLE_TABLE)


class RoleOption(click.Option):
    """``--role``, whose help lists the valid roles (read when the help is shown, so it
    follows SYNCLINE_CONFIG's [roles] table)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = f"A role (repeatable). Valid roles: {', '.join(valid_roles())}{_roles_source(None)}."
        return super().get_help_record(ctx)


def _time(value: str) -> float:
    """Seconds since the epoch, or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from e
    if dt.tzinfo is None:
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@click.group(invoke_without_command=True)
@click.option("--tenant", default=None, help="Tenant id the token is scoped to.")
@click.option("--user", default=None, help="User id (the `sub` claim).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="Configuration file whose [roles] table applies (default SYNCLINE_CONFIG).")
@click.option("--role", "roles", multiple=True, default=("member",), show_default=True, cls=RoleOption)
@click.option("--perm", "perms", multiple=True, help="Explicit permissions (the optional `perms` claim).")
@click.option("--scope", "scopes", multiple=True,
              help="Narrow the token to streams by pattern: read:<pattern> or write:<pattern> (write implies "
                   "read; * matches any characters), e.g. --scope 'read:doc/handbook-*' --scope write:room/support. "
                   "Repeatable; without it the token covers its whole tenant.")
@click.option("--ttl", "ttl_s", default=86400, show_default=True, help="Lifetime in seconds.")
@click.pass_context
def token(ctx: click.Context, config_file: str | None, tenant: str | None, user: str | None,
          roles: tuple[str, ...], perms: tuple[str, ...], scopes: tuple[str, ...], ttl_s: int) -> None:
    """Print a signed development token (HS256 with SYNCLINE_JWT_SECRET), with `jti` and `iat`.

    `syncline token revoke` revokes tokens (see its --help)."""
    if ctx.invoked_subcommand is not None:
        return
    if not tenant or not user:
        raise click.UsageError("minting a token needs --tenant and --user")
    settings = _settings(config_file)
    unknown = [r for r in roles if r not in settings.roles]
    if unknown:
        raise click.BadParameter(f"unknown role {unknown[0]!r}; valid roles: {', '.join(settings.roles)}"
                                 f"{_roles_source(config_file)}", param_hint="--role")
    try:
        click.echo(mint(settings, tenant, user, list(roles), ttl_s, list(perms) or None, list(scopes) or None))
    except ValidationError as e:
        raise click.BadParameter(e.message, param_hint="--scope") from e
    except SynclineError as e:
        raise click.ClickException(f"{e.code}: {e.message}") from None


@token.command("revoke")
@click.option("--tenant", required=True, help="The tenant whose tokens are revoked.")
@click.option("--jti", default=None, help="Revoke the token with this id (its `jti` claim).")
@click.option("--user", default=None, help="Revoke every token of this user issued before --before.")
@click.option("--before", default=None, help="With --user: epoch seconds or ISO 8601 (default: now).")
@click.option("--reason", default="", help="Why (kept in the event).")
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
def revoke(tenant: str, jti: str | None, user: str | None, before: str | None, reason: str,
           database_url: str | None) -> None:
    """Revoke a token (--jti) or all of a user's tokens issued before a time (--user, --before).

    Recorded as a `token.revoked` event on the tenant's `$revocations` stream; every running
    gateway refuses the tokens from then on and closes their open sessions (4401 token_revoked)."""
    from syncline.api.revocations import REVOCATIONS_STREAM, TOKEN_REVOKED, revocation_from
    from syncline.engine.events import Actor, NewEvent, Retention
    from syncline.store import open_store

    if (jti is None) == (user is None):
        raise click.UsageError("give either --jti or --user")
    if before is not None and user is None:
        raise click.UsageError("--before goes with --user")
    try:
        check_tenant(tenant)
        data: dict = {"jti": jti} if jti is not None else {
            "user": user, "before": _time(before) if before is not None else time.time()}
        r = revocation_from(tenant, data)
    except SynclineError as e:
        raise click.ClickException(f"{e.code}: {e.message}") from None

    async def go() -> int:
        store = await open_store(database_url or Settings().database_url)
        try:
            result = await store.append(tenant, REVOCATIONS_STREAM, [NewEvent(
                TOKEN_REVOKED, data={**r.to_data(), "reason": reason[:500], "by": {"user": "cli"}},
                actor=Actor("cli"), retention=Retention.CRITICAL)])
            return result.streams[0].first_position
        finally:
            await store.close()

    try:
        position = asyncio.run(go())
    except SynclineError as e:
        raise click.ClickException(f"{e.code}: {e.message}") from None
    what = f"token {jti}" if jti is not None else f"tokens of {user} issued before {r.before:.0f}"
    click.echo(f"revoked {what} in tenant {tenant} (log position {position})")


COMMANDS = [token]
