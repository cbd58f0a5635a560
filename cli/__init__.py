"""The ``syncline`` command line. Each command group lives in cli/commands/."""
from __future__ import annotations

import click

from .commands import admin, audit, bus, config, history, simulate, token


@click.group()
@click.version_option(package_name="syncline")
def main() -> None:
    """Syncline: an event-sourced CRDT sync engine."""
    _configure_logging()


def _configure_logging() -> None:
    """Every command's log lines (migrations, the prune job, the server) as JSON on stderr,
    with ``service`` and ``version`` (api/logging.py); the commands' own output stays on
    stdout. ``SYNCLINE_LOG_FORMAT=console`` renders for a terminal instead."""
    import os

    try:
        from syncline.api.logging import configure_logging
    except ImportError:  # pragma: no cover - a build without the gateway
        return
    configure_logging(os.environ.get("SYNCLINE_LOG_FORMAT", "json") == "json")


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
