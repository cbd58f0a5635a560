"""`syncline export` and `syncline replay`: the log for analysts.

``export`` writes events in log order as JSON Lines (one event per line, the REST
API's event shape; bytes such as Yjs updates as base64 strings, as the REST API sends
them). ``replay`` rebuilds the built-in projections from position 0, up to a position
if asked (the state of everything as it was then), and prints what they hold: a
summary by default, the values themselves with ``--show`` (cli/commands/replay_show.py).
Both show a progress bar on stderr; the data goes to stdout or a file.
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import IO, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from syncline.api.settings import Settings
from syncline.engine.errors import SynclineError, UnknownTenant
from syncline.engine.events import check_tenant
from syncline.engine.filters import EventFilter
from syncline.engine.projections import builtin_projections
from syncline.store import open_store
from syncline.store.projector import Projector

from .admin import _run
from .replay_show import holdings, print_holdings

err = Console(stderr=True)
PAGE = 2000


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"cannot export a {type(value).__name__}")


def _scope(tenant: str | None, all_tenants: bool) -> str | None:
    if all_tenants == (tenant is not None):
        raise click.UsageError("give --tenant T or --all-tenants (one of them)")
    if tenant is not None:
        try:
            check_tenant(tenant)
        except SynclineError as e:
            raise click.BadParameter(f"{e.code}: {e.message}", param_hint="--tenant") from None
    return tenant


async def _open(database_url: str | None, scope: str | None) -> Any:
    """The store, after checking that the tenant asked for exists (a typo exports nothing
    and says so, rather than an empty file that looks like an answer)."""
    store = await open_store(database_url or Settings().database_url)
    if scope is not None and not await store.tenant_exists(scope):
        await store.close()
        raise UnknownTenant(f"no tenant {scope!r} in this log", tenant=scope)
    return store


@click.command()
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--tenant", default=None, help="Export this tenant's events.")
@click.option("--all-tenants", is_flag=True, help="Export every tenant's events.")
@click.option("--prefix", multiple=True, help="Only streams starting with this (repeatable), e.g. doc/.")
@click.option("--type", "types", multiple=True, help="Only these event types; globs like order.* (repeatable).")
@click.option("--after", default=0, type=click.IntRange(min=0), help="Start after this position.")
@click.option("--until", default=None, type=click.IntRange(min=0), help="Stop at this position (default: the head).")
@click.option("--out", "out_path", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="Output file (default: stdout).")
def export(database_url, tenant, all_tenants, prefix, types, after, until, out_path) -> None:
    """Write events in log order as JSON Lines."""
    scope = _scope(tenant, all_tenants)
    flt = EventFilter(stream_prefixes=tuple(prefix), types=tuple(types)) if prefix or types else None

    async def go(out: IO[str]) -> int:
        store = await _open(database_url, scope)
        try:
            head = await store.head_position()
            stop = head if until is None else min(until, head)
            written, cursor = 0, after
            with _progress() as progress:
                task = progress.add_task("exporting", total=max(stop - after, 0))
                while cursor < stop:
                    page = await store.read_log(scope, after=cursor, limit=PAGE, filter=flt,
                                                all_tenants=scope is None)
                    for e in page.events:
                        if e.position > stop:
                            break
                        out.write(json.dumps(e.to_wire(), default=_json_default, separators=(",", ":")) + "\n")
                        written += 1
                    if page.next_after <= cursor:
                        break
                    cursor = page.next_after
                    progress.update(task, completed=min(cursor, stop) - after)
            return written
        finally:
            await store.close()

    if out_path == "-":
        written = _run(go(sys.stdout))
        sys.stdout.flush()
    else:
        with open(out_path, "w", encoding="utf-8") as f:
            written = _run(go(f))
    err.print(f"exported {written:,} events")


@click.command()
@click.option("--db", "database_url", default=None, help="Store URL (default SYNCLINE_DATABASE_URL).")
@click.option("--tenant", default=None, help="Replay this tenant's events.")
@click.option("--all-tenants", is_flag=True, help="Replay every tenant's events.")
@click.option("--until", default=None, type=click.IntRange(min=0), help="Stop at this position (default: the head).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary (and with --show the values) as one JSON object.")
@click.option("--show", is_flag=True,
              help="Also print what the projections hold: record values and conflicts, document content, "
                   "who is in each room, each feed's newest item, each stream's version.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="With --show: at most this many entries per projection (the rest is counted).")
def replay(database_url, tenant, all_tenants, until, as_json, show, limit) -> None:
    """Rebuild the projections (records, documents, feeds, presence, stats) from position 0
    and print what they hold (a summary; the values with --show)."""
    scope = _scope(tenant, all_tenants)

    async def go() -> tuple[Projector, float]:
        store = await _open(database_url, scope)
        try:
            head = await store.head_position()
            stop = head if until is None else min(until, head)
            projector = Projector(store, builtin_projections(), tenant=scope, all_tenants=scope is None, batch=PAGE)
            started = time.perf_counter()
            with _progress() as progress:
                task = progress.add_task("replaying", total=stop)
                run = asyncio.ensure_future(projector.catch_up(until=stop))
                while not run.done():
                    await asyncio.wait([run], timeout=0.1)
                    progress.update(task, completed=projector.position)
                run.result()
            return projector, time.perf_counter() - started
        finally:
            await store.close()

    projector, seconds = _run(go())
    summary = _summary(projector, seconds)
    held = holdings(projector, limit) if show else None
    if as_json:
        click.echo(json.dumps({**summary, "holds": held} if held is not None else summary, ensure_ascii=False))
        return
    table = Table("projection", "holds", title=f"replayed to position {projector.position:,} "
                                               f"in {seconds:.2f} s ({summary['events_per_s']:,} events/s)")
    table.add_row("records", f"{summary['records']:,} records in {summary['tenants_with_records']} tenants")
    table.add_row("documents", f"{summary['documents']:,} documents")
    table.add_row("feeds", f"{summary['user_feeds']:,} user feeds, {summary['room_feeds']:,} room feeds")
    table.add_row("presence", f"{summary['rooms_with_history']:,} rooms, {summary['present']:,} users present")
    table.add_row("stats", f"{summary['streams']:,} streams, {summary['events']:,} events")
    console = Console()
    console.print(table)
    if held is not None:
        print_holdings(console, held)


def _summary(p: Projector, seconds: float) -> dict[str, Any]:
    records = p.state("records")
    stats = p.state("stats")
    events = sum(s.events for s in stats.values())
    return {
        "position": p.position,
        "seconds": round(seconds, 3),
        "events": events,
        "events_per_s": round(events / seconds) if seconds > 0 else 0,
        "records": sum(len(records[t]) for t in records),
        "tenants_with_records": len(records),
        "documents": len(p.state("documents").docs),
        "user_feeds": len(p.state("feeds").by_user),
        "room_feeds": len(p.state("feeds").by_room),
        "rooms_with_history": len(p.state("presence").history),
        "present": sum(len(v) for v in p.state("presence").present.values()),
        "streams": len(stats),
    }


COMMANDS = [export, replay]
