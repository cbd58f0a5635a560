"""`syncline config check` and `syncline config show`: the configuration file, checked and explained.

``check`` reads the file (``--config`` or ``SYNCLINE_CONFIG``) and prints one line per
problem, ``FILE:LINE: KEY: what is wrong``, exiting 1 when there is any. ``show`` prints
every setting's effective value (defaults, then the file, then the environment, the
environment winning) and where it came from, secrets and URL passwords masked
(docs/configuration.md).
"""
from __future__ import annotations

import json
import sys

import click

from syncline.api.config_file import CONFIG_ENV, ConfigError, check_file, config_path, effective

CONFIG_OPTION = click.option(
    "--config", "config_file", default=None, type=click.Path(dir_okay=False),
    help=f"The configuration file (default ${CONFIG_ENV}).")


@click.group()
def config() -> None:
    """Check the configuration file or show the effective configuration."""


@config.command("check")
@CONFIG_OPTION
def check(config_file: str | None) -> None:
    """Validate the configuration file: every problem with its line and key; exit 1 on any."""
    path = config_path(config_file)
    if path is None:
        raise click.UsageError(f"no configuration file: give --config FILE or set {CONFIG_ENV}")
    problems = check_file(path)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {path}", err=True)
        sys.exit(1)
    click.echo(f"{path}: ok")


@config.command("show")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def show(config_file: str | None, as_json: bool) -> None:
    """Print the effective configuration (file + environment + defaults) and each value's source."""
    try:
        rows = effective(config_file)
    except ConfigError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        value = r["value"]
        shown = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
        click.echo(f"{r['key']:<{width}}  {shown}  ({r['source']})")


COMMANDS = [config]
