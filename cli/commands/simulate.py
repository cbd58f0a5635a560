"""`syncline simulate`: run a deterministic simulation scenario and write a report."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--scenario", "scenario_name", default="offline-records", show_default=True,
              help="Scenario name (see simulations/scenarios.py).")
@click.option("--clients", default=20, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--duration", "duration_s", default=None, type=float, help="Virtual seconds of workload.")
@click.option("--store", type=click.Choice(["memory", "sqlite"]), default="memory", show_default=True)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Report directory (default simulations/out/<scenario>-<seed>).")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
def simulate(scenario_name: str, clients: int, seed: int, duration_s: float | None, store: str,
             out_dir: str | None, list_only: bool) -> None:
    """Run a seeded simulation: same seed, same log and trace; prints the seed and step on failure."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from syncline.simulations import scenarios
    from syncline.simulations.checkers import summarize
    from syncline.simulations.report import write_report
    from syncline.simulations.sim import Params, Simulation

    console = Console()
    if list_only:
        for s in scenarios.SCENARIOS.values():
            console.print(f"[bold]{s.name}[/]: {s.description}")
        return
    try:
        sc = scenarios.get(scenario_name)
    except KeyError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--scenario") from None
    tmp = None
    sqlite_path = None
    if store == "sqlite":
        tmp = tempfile.TemporaryDirectory(prefix="syncline-sim-")
        sqlite_path = str(Path(tmp.name) / "sim.db")
    params = Params(clients=clients, seed=seed, store=store, sqlite_path=sqlite_path,
                    duration_ms=int(duration_s * 1000) if duration_s else None)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[vt]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"{sc.name} seed={seed}", total=1, vt="")

        def on_progress(t: int, total: int) -> None:
            progress.update(task, completed=t, total=total, vt=f"t={t / 1000:.1f}s")

        sim = Simulation(sc, params, progress=on_progress)
        try:
            result = sim.run()
        finally:
            sim.close()
    table = Table(title=f"simulate {sc.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    m = result.metrics
    conv = m.get("convergence_ms") or [0]
    for k, v in [
        ("clients", result.clients), ("seed", result.seed), ("steps", result.steps),
        ("virtual time (s)", f"{result.virtual_ms / 1000:.1f}"), ("wall time (s)", f"{result.wall_s:.2f}"),
        ("events in log", result.events), ("ops created / acked", f"{result.ops_created} / {result.ops_acked}"),
        ("convergence p50 / max (ms)", f"{conv[len(conv) // 2]} / {conv[-1]}"),
        ("messages (lost / dup / resets)", f"{m['network']['messages']} ({m['network']['lost']} / "
                                           f"{m['network']['duplicated']} / {m['network']['resets']})"),
        ("refreshes / snapshots", f"{m['refreshes']} / {m['snapshots']}"),
        ("log hash", result.log_hash[:16]), ("trace hash", result.trace_hash[:16]),
        ("violations", ", ".join(f"{k}={n}" for k, n in summarize(result.violations).items()) or "none"),
    ]:
        table.add_row(k, str(v))
    console.print(table)
    if out_dir:
        out = Path(out_dir)
    else:
        out = Path(__file__).resolve().parents[2] / "simulations" / "out" / f"{sc.name}-{seed}"
    path = write_report(result, out)
    console.print(f"report: {path}")
    if tmp is not None:
        tmp.cleanup()
    if not result.ok:
        failure = sim.failure(result)
        console.print(f"[red]{failure}[/]")
        raise SystemExit(1)


COMMANDS = [simulate]
