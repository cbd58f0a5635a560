"""A consumer group member in its own process, for the multi-process bus tests.

    python bus_worker.py URL GROUP MEMBER_ID MODE [HANDLER_MS]

MODE ``group``: a member of a 16-partition group; ``durable``: a durable subscription.
Tenant ``acme``. Each event is handled with the idempotent helper, which inserts one
row into ``effects`` (created by the test) in the same transaction; every delivery is
also printed as ``handled <event id> <stream> <version>`` (at-least-once evidence).
An event whose payload has ``"kill": true`` makes the handler SIGKILL its own process
(a poison event that crashes workers); it prints ``handling <event id> <attempt>`` first.
Runs until killed or until stdin closes.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text  # noqa: E402

from syncline.bus import Bus, idempotent  # noqa: E402
from syncline.store import open_store  # noqa: E402


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(url: str, group: str, member_id: str, mode: str, handler_ms: float) -> None:
    store = await open_store(url, poll_interval_s=0.2)
    bus = Bus(store)

    @idempotent
    async def handle(d, conn):
        if d.event.data.get("kill"):
            out(f"handling {d.event.id} {d.attempt}")
            os.kill(os.getpid(), signal.SIGKILL)
        out(f"handled {d.event.id} {d.event.stream} {d.event.version}")
        if handler_ms:
            await asyncio.sleep(handler_ms / 1000)
        await conn.execute(
            text("INSERT INTO effects (event_id, stream, version, member) VALUES (:i, :s, :v, :m)"),
            {"i": d.event.id, "s": d.event.stream, "v": d.event.version, "m": member_id},
        )

    options = dict(tenant="acme", member_id=member_id, lease_s=1.5, commit_interval_s=0.05)
    if mode == "durable":
        member = bus.durable(group, handle, **options)
    else:
        member = bus.group(group, handle, partitions=16, **options)
    await member.start()
    out(f"ready {member_id} {member.owned}")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await member.stop()
    await store.close()
    out("stopped")


if __name__ == "__main__":
    handler_ms = float(sys.argv[5]) if len(sys.argv) > 5 else 0
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], handler_ms))
