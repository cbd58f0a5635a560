"""`syncline serve` with a SIGUSR1 handler that prints every asyncio task's stack (and every
thread's) to stderr: the chaos tests send it when a client does not converge, so a hang
in the gateway shows where it waits."""
from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys


def _dump(_signum, _frame) -> None:
    out = sys.stderr
    print("=== asyncio tasks (SIGUSR1) ===", file=out)
    loop = asyncio._get_running_loop()
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=30, file=out)
    print("=== threads ===", file=out)
    faulthandler.dump_traceback(out, all_threads=True)
    out.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _dump)
    from syncline.cli import main

    main()
