"""A consumer-group member over the native WebSocket, in its own process.

    python ws_member.py WS_BASE TOKEN GROUP EFFECTS_DIR [KILL_AFTER]

Runs the idempotent handler of effects.py on every delivery, acks each batch when it is
done and nacks what failed (with the traceback as the trace). With KILL_AFTER it SIGKILLs
its own process right after its KILL_AFTER-th effect when more of the batch is left
unacked: a consumer dying mid-batch. Prints ``kill <event id>`` first.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from effects import apply_effect, prepare  # noqa: E402

from syncline.clientkit.bus_consumer import BusConsumer  # noqa: E402


async def main(ws_base: str, token: str, group: str, effects: Path, kill_after: int) -> None:
    prepare(effects)
    done = 0
    member = f"ws-{os.getpid()}"
    async with BusConsumer(ws_base, token, group=group, credits=200, max_batch=100, lease_s=10) as c:
        print("joined", c.session["session"], flush=True)
        async for batch in c:
            acks = []
            for i, d in enumerate(batch):
                try:
                    if apply_effect(effects, d["event"], member, d["attempt"], d["id"]) == "done":
                        done += 1
                    acks.append(d["id"])
                except Exception as e:
                    await c.nack([d["id"]], str(e), trace=traceback.format_exc())
                if kill_after and done >= kill_after and i < len(batch) - 1:
                    print("kill", d["event"]["id"], flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            if acks:
                await c.ack(acks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]),
                     int(sys.argv[5]) if len(sys.argv) > 5 else 0))
