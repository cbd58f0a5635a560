"""A client process for the kill -9 test.

    ck_child.py enqueue QUEUE N          queue ops until the queue has made N (prints each)
    ck_child.py drain QUEUE URL TOKEN    connect and submit; prints "acked K" as answers arrive
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.getcwd())

from syncline.clientkit.client import SynclineClient  # noqa: E402
from syncline.clientkit.core import SessionCore  # noqa: E402
from syncline.clientkit.queue import SqliteOpQueue  # noqa: E402


def enqueue(path: str, n: int) -> None:
    q = SqliteOpQueue(path)
    core = SessionCore(user="alice", queue=q, auto_reconnect=False)
    made = q.get_meta("n", 0)
    for i in range(made + 1, n + 1):
        core.set(f"rec/items/{i % 10}", {"v": i, "seq": i}, time.time_ns() // 1_000_000)
        print(i, flush=True)
    print("done", flush=True)


async def drain(path: str, url: str, token: str) -> None:
    c = SynclineClient(url, token, user="alice", queue_path=path, batch_size=50, max_inflight=1)
    c.on("on_op_result", lambda *a: print("acked", c.stats["acked"], flush=True))
    await c.start()
    await c.wait_until(lambda: c.pending == 0, 60)
    print("drained", flush=True)
    await c.close()


if __name__ == "__main__":
    if sys.argv[1] == "enqueue":
        enqueue(sys.argv[2], int(sys.argv[3]))
    else:
        asyncio.run(drain(sys.argv[2], sys.argv[3], sys.argv[4]))
