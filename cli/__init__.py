"""The ``syncline`` command line. Each command group lives in cli/commands/."""
from __future__ import annotations

import click

from .commands import admin, audit, bus, config, history, simulate, token


@click.group()
@click.version_option(package_name="syncline")
def main() -> None:
    """Syncline: an event-sourced CRDT sync engine."""


for module in (admin, audit, bus, config, history, simulate, token):
    for command in module.COMMANDS:
        main.add_command(command)

try:  # the gateway (api/app.py) provides `serve`
    from .commands import serve

    for command in serve.COMMANDS:
        main.add_command(command)
except ImportError:  # pragma: no cover - only while the gateway is being built
    pass


if __name__ == "__main__":
    main()
