"""`syncline verify` and `syncline prune`: log administration."""
from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.table import Table

from syncline.api.settings import Settings
from syncline.engine.errors import SynclineError
from syncline.store import open_store
from syncline.store.maintenance import prune_job

console = Console()


def _run(coro):
    try:
        return asyncio.run(coro)
    except SynclineError as e:
        console.print(f"[red]error[/red] {e.code}: {e.message}")
        raise SystemExit(2)


@click.command()
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--tenant", default=None, help="Only this tenant's chains (skips the log-wide checks).")
@click.option("--stream", default=None, help="Only this stream's chain (skips the log-wide checks).")
@click.option("--public-key", "public_keys", multiple=True,
              help="Ed25519 public key (file or value) checkpoints are signed with; repeat during a rotation. "
                   "Default: SYNCLINE_AUDIT_PUBLIC_KEYS, and the signing key's own if one is configured.")
@click.option("--against", "export_file", default=None, type=click.Path(dir_okay=False),
              help="Checkpoints exported earlier (`syncline audit export`): the database must still hold them.")
def verify(database_url: str | None, tenant: str | None, stream: str | None, public_keys: tuple[str, ...],
           export_file: str | None) -> None:
    """Check the log: every stream's hash chain, the streams rows against the events, the
    positions against the log head and the prune records, and every signed checkpoint
    (signature, chain, position, critical count, stream heads). Exit 1 on any problem."""
    from syncline.store.audit import public_keys_from, read_export, verify_audit

    settings = Settings()
    whole_log = tenant is None and stream is None

    async def go():
        keys = public_keys_from(settings, public_keys)
        exported = read_export(export_file) if export_file else []
        store = await open_store(database_url or settings.database_url)
        try:
            report = await store.verify(tenant, stream)
            audit = None
            if whole_log and getattr(store, "engines", None) is not None:
                audit = await verify_audit(store, keys, exported=exported, expect_signed=bool(keys))
            return report, audit
        finally:
            await store.close()

    report, audit = _run(go())
    problems, stats = audit if audit is not None else ([], {})
    console.print(f"checked {report.events_checked} events in {report.streams_checked} streams")
    if stats:
        console.print(f"log head {stats['head']}, {stats['pruned']} events pruned, {stats['critical']} critical, "
                      f"{stats['checkpoints']} signed checkpoints")
    if report.ok and not problems:
        console.print("[green]the log verifies[/green]")
        return
    if not report.ok:
        table = Table("tenant", "stream", "version", "position", "reason", title="chain breaks")
        for b in report.breaks:
            table.add_row(b.tenant, b.stream, str(b.version), str(b.position), b.reason)
        console.print(table)
    for p in problems:  # one line each, unwrapped: kinds are stable, for scripts to match
        where = "".join([f" checkpoint={p.seq}" if p.seq is not None else "",
                         f" position={p.position}" if p.position is not None else ""])
        click.echo(f"problem {p.kind}{where}: {p.detail}")
    raise SystemExit(1)


@click.command()
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--retention-days", default=None, type=float, help="Default: SYNCLINE_RETENTION_S (7 days).")
@click.option("--tenant", default=None)
@click.option("--ignore-checkpoints", is_flag=True, help="Prune past durable subscription checkpoints too.")
def prune(database_url: str | None, retention_days: float | None, tenant: str | None, ignore_checkpoints: bool) -> None:
    """Delete `standard` events older than the retention period (never `critical` ones)."""
    settings = Settings()
    retention_s = retention_days * 86400 if retention_days is not None else settings.retention_s

    async def go():
        from syncline.store.audit import audit_options

        # With the audit key configured, a prune that deleted something is signed at once.
        store = await open_store(database_url or settings.database_url, **audit_options(settings))
        try:
            if tenant is not None:
                return await store.prune(
                    retention_s=retention_s, respect_checkpoints=not ignore_checkpoints, tenant=tenant
                )
            return await prune_job(store, retention_s=retention_s, respect_checkpoints=not ignore_checkpoints)
        finally:
            await store.close()

    r = _run(go())
    console.print(f"deleted {r.events_deleted} events from {r.streams_touched} streams; "
                  f"{r.held_back_by_checkpoint} held back by durable checkpoints")
    by = r.details.get("held_back_by")
    if by:
        console.print(f"held back by checkpoint {by['name']!r} (tenant {by['tenant']!r}) at position {by['position']}")
    for c in r.details.get("unowned_checkpoints", ()):
        console.print(f"[yellow]unowned checkpoint[/yellow] {c['name']!r} (tenant {c['tenant']!r}) at position "
                      f"{c['position']}: no consumer group owns it any more (see `syncline bus groups`)")


COMMANDS = [verify, prune]
