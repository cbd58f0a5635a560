"""`syncline bus ...`: consumer groups (lag, members) and the dead-letter queue."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.table import Column, Table

from syncline.api.settings import Settings
from syncline.engine.errors import SynclineError
from syncline.store import open_store

console = Console()
db_option = click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")


def _run(action):
    """Open the store, run ``action(bus)``, close; typed errors become exit code 2."""
    from syncline.bus import Bus

    async def go(url):
        from syncline.store.audit import audit_options

        settings = Settings()  # with the audit key, what a dead-letter command writes is signed at close
        store = await open_store(url or settings.database_url, listen=False, **audit_options(settings))
        try:
            return await action(Bus(store))
        finally:
            await store.close()

    def runner(url):
        try:
            return asyncio.run(go(url))
        except SynclineError as e:
            console.print(f"[red]error[/red] {e.code}: {e.message}", soft_wrap=True)
            raise SystemExit(2)

    return runner


def _time(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if us else "-"


@click.group()
def bus() -> None:
    """The event bus: consumer groups and dead letters."""


@bus.command("groups")
@db_option
@click.option("--tenant", default=None, help="Only this tenant's groups ('*' for platform groups).")
@click.option("--rate-window", default=1.0, show_default=True,
              help="Seconds between two reads of the consumed counters for the consumed rate (0: no rate).")
@click.option("--json", "as_json", is_flag=True)
def groups_cmd(database_url, tenant, rate_window, as_json) -> None:
    """List consumer groups: lag, dead letters, events consumed (and per second), members,
    and mirrored checkpoints no group owns any more (they hold `syncline prune` back).

    The figures /metrics exports (docs/bus.md#metrics), except that lag here is an exact
    count of the group's tenant's events past its lowest partition checkpoint (/metrics
    gives log positions, cheaper to read); consumed is what its handlers acked, in every
    process."""
    from syncline.store.bus import bus_figures, unowned_mirrors

    async def go(b):
        first = await bus_figures(b.store) if rate_window > 0 else None
        if first is not None:
            await asyncio.sleep(rate_window)
        return await b.groups(tenant), await bus_figures(b.store), first, await unowned_mirrors(b.store)

    groups, figures, first, unowned = _run(go)(database_url)
    now = {(x["scope"], x["group"]): x for x in figures["groups"]}
    before = {(x["scope"], x["group"]): x for x in first["groups"]} if first else {}
    for g in groups:
        f = now.get((g["scope"], g["group"]), {})
        g["consumed"] = f.get("consumed", 0)
        g["dead_letters"] = f.get("dead_letters", {})
        b = before.get((g["scope"], g["group"]))
        g["consumed_per_s"] = round((g["consumed"] - b["consumed"]) / rate_window, 1) if b else None
    if tenant is not None:
        unowned = [c for c in unowned if c["tenant"] == tenant]
    if as_json:
        click.echo(json.dumps(groups))
        return
    table = Table(Column("tenant", no_wrap=True), Column("group", no_wrap=True), "parts", "checkpoint", "lag",
                  "dlq", "consumed", "per s", "members", "free",
                  title=f"consumer groups (log head {figures['head']}; dlq: dead letters; "
                        "free: partitions nobody holds)")
    for g in groups:
        members = ", ".join(f"{m['member']} ({len(m['partitions'])}p)" for m in g["members"]) or "-"
        rate = "-" if g["consumed_per_s"] is None else f"{g['consumed_per_s']:,.1f}"
        table.add_row(g["scope"], g["group"], str(g["partitions"]), str(g["low_watermark"]), str(g["lag"]),
                      str(g["dead_letters"].get("dead", 0)), f"{g['consumed']:,}", rate, members,
                      str(len(g["unowned"])))
    console.print(table)
    for c in unowned:
        console.print(f"[yellow]unowned checkpoint[/yellow] {c['name']!r} (tenant {c['tenant']!r}) at position "
                      f"{c['position']}: no consumer group owns it; it holds `syncline prune` back", soft_wrap=True)


@bus.group("dlq")
def dlq() -> None:
    """Inspect, edit, requeue and discard dead letters."""


@dlq.command("list")
@db_option
@click.option("--tenant", default=None, help="The group's tenant ('*' for platform groups).")
@click.option("--group", default=None)
@click.option("--status", default="dead", show_default=True, help="dead|requeued|redelivering|resolved|discarded|all")
@click.option("--stream-prefix", default=None)
@click.option("--type", "type_", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(database_url, tenant, group, status, stream_prefix, type_, limit, as_json) -> None:
    """List dead letters matching the criteria."""
    entries = _run(lambda b: b.dlq.query(
        scope=tenant, group=group, status=status, stream_prefix=stream_prefix, type=type_, limit=limit,
    ))(database_url)
    if as_json:
        click.echo(json.dumps([_brief(e) for e in entries]))
        return
    table = Table("tenant", "group", "stream", "type", "position", "attempts", "last failure", "status", "reason",
                  title="dead letters (show, edit, requeue and discard take an id or a unique prefix of it)")
    # the id is never cut, however narrow the terminal: the other columns fold instead
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    for e in entries:
        table.add_row(e.id, e.scope, e.group, e.stream, e.type, str(e.position), str(e.attempts),
                      _time(e.last_failure_us), e.status, e.reason[:60])
    console.print(table)


def _brief(e) -> dict:
    d = e.to_dict()
    d.pop("trace")
    return d


@dlq.command("show")
@db_option
@click.argument("entry_id", metavar="ID_OR_PREFIX")
def dlq_show(database_url, entry_id) -> None:
    """Show one dead letter: the original event, the failure and its stack trace."""
    async def go(b):
        return await b.dlq.get(await b.dlq.resolve(entry_id))

    e = _run(go)(database_url)
    click.echo(json.dumps(e.to_dict(), indent=2, default=str))


@dlq.command("edit")
@db_option
@click.argument("entry_id", metavar="ID_OR_PREFIX")
@click.option("--data", "data_json", required=True, help="The new payload, as JSON.")
@click.option("--by", default="cli")
def dlq_edit(database_url, entry_id, data_json, by) -> None:
    """Replace the payload a requeue will deliver."""
    try:
        data = json.loads(data_json)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--data") from None

    async def go(b):
        return await b.dlq.edit(await b.dlq.resolve(entry_id), data, by=by)

    e = _run(go)(database_url)
    console.print(f"edited {e.id}")


@dlq.command("requeue")
@db_option
@click.argument("entry_ids", nargs=-1, required=True, metavar="ID_OR_PREFIX...")
@click.option("--by", default="cli")
def dlq_requeue(database_url, entry_ids, by) -> None:
    """Deliver dead letters to their group again (with their original event ids)."""

    async def go(b):
        ids = [await b.dlq.resolve(i) for i in entry_ids]  # all resolved before any is requeued
        return [await b.dlq.requeue(i, by=by) for i in ids]

    for e in _run(go)(database_url):
        console.print(f"requeued {e.id} ({e.stream} v{e.version}) to {e.group}")


@dlq.command("discard")
@db_option
@click.argument("entry_ids", nargs=-1, required=True, metavar="ID_OR_PREFIX...")
@click.option("--reason", required=True)
@click.option("--by", default="cli")
def dlq_discard(database_url, entry_ids, reason, by) -> None:
    """Discard dead letters, with a reason (recorded on the $dlq/<group> stream)."""

    async def go(b):
        ids = [await b.dlq.resolve(i) for i in entry_ids]  # all resolved before any is discarded
        return [await b.dlq.discard(i, reason, by=by) for i in ids]

    for e in _run(go)(database_url):
        console.print(f"discarded {e.id}")


COMMANDS = [bus]
