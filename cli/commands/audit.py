"""`syncline audit ...`: the signed audit checkpoints (store/audit.py).

- ``keygen``      make an Ed25519 key pair (the private key file is created 0600);
- ``checkpoint``  sign a checkpoint of the log now (needs the private key);
- ``export``      write every checkpoint as JSON lines, to keep elsewhere; ``syncline
                  verify --against FILE`` later checks the database still holds them.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from syncline.api.settings import Settings
from syncline.engine.errors import SynclineError
from syncline.store import open_store

console = Console(stderr=True)


def _run(coro):
    try:
        return asyncio.run(coro)
    except SynclineError as e:
        console.print(f"[red]error[/red] {e.code}: {e.message}")
        raise SystemExit(2)


@click.group()
def audit() -> None:
    """Signed audit checkpoints: keys, signing, export."""


@audit.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to create (PEM, mode 0600); the public key goes to OUT.pub.")
def keygen(out: str) -> None:
    """Make a new Ed25519 key pair for signing checkpoints."""
    from syncline.store.audit import generate_key, key_id, parse_public_key

    path = Path(out)
    if path.exists():
        console.print(f"[red]error[/red] exists: {out} (a key is never overwritten)")
        raise SystemExit(2)
    private, public = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(f"{out}.pub").write_bytes(public)
    click.echo(f"key {key_id(parse_public_key(public))}: private {out}, public {out}.pub")


@audit.command("checkpoint")
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--force", is_flag=True, help="Sign even if nothing changed since the newest checkpoint.")
def checkpoint(database_url: str | None, force: bool) -> None:
    """Sign a checkpoint of the log now (SYNCLINE_AUDIT_KEY_FILE or SYNCLINE_AUDIT_KEY)."""
    from syncline.store.audit import AuditKeyInvalid, load_signing_key, write_checkpoint

    settings = Settings()

    async def go():
        key = load_signing_key(settings.audit_key_file, settings.audit_key)
        if key is None:
            raise AuditKeyInvalid("no audit key: set SYNCLINE_AUDIT_KEY_FILE or SYNCLINE_AUDIT_KEY")
        store = await open_store(database_url or settings.database_url)
        try:
            return await write_checkpoint(store, key, force=force)
        finally:
            await store.close()

    cp = _run(go())
    if cp is None:
        click.echo("nothing changed since the newest checkpoint")
    else:
        click.echo(f"checkpoint {cp.seq} at position {cp.position} ({cp.critical} critical events), key {cp.key}")


@audit.command("export")
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--out", "out", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write (default: standard output).")
def export(database_url: str | None, out: str) -> None:
    """Write every signed checkpoint as JSON lines, for keeping elsewhere."""
    from syncline.store.audit import read_checkpoints

    settings = Settings()

    async def go():
        store = await open_store(database_url or settings.database_url)
        try:
            return await read_checkpoints(store)
        finally:
            await store.close()

    cps = _run(go())
    text = "".join(cp.to_json() + "\n" for cp in cps)
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        console.print(f"{len(cps)} checkpoints written to {out}")


COMMANDS = [audit]
