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
@click.option("--tenant", default=None)
@click.option("--stream", default=None)
def verify(database_url: str | None, tenant: str | None, stream: str | None) -> None:
    """Walk every stream's hash chain; exit 1 if any event was edited, deleted or moved."""

    async def go():
        store = await open_store(database_url or Settings().database_url)
        try:
            return await store.verify(tenant, stream)
        finally:
            await store.close()

    report = _run(go())
    console.print(f"checked {report.events_checked} events in {report.streams_checked} streams")
    if report.ok:
        console.print("[green]the log verifies[/green]")
        return
    table = Table("tenant", "stream", "version", "position", "reason", title="chain breaks")
    for b in report.breaks:
        table.add_row(b.tenant, b.stream, str(b.version), str(b.position), b.reason)
    console.print(table)
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
        store = await open_store(database_url or settings.database_url)
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


COMMANDS = [verify, prune]
