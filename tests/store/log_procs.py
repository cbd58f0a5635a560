"""Child processes for the multi-process store tests (run as `python log_procs.py MODE URL ...`).

writer N TAG        append N single-event calls from 8 tasks; print each acknowledged position
slow-writer TAG     one append whose transaction stays open 2 s before COMMIT (PostgreSQL)
rollback-writer TAG one append that writes, then rolls back (PostgreSQL)
reader EXPECTED     tail all tenants; print every position received, until EXPECTED events
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from syncline.engine.events import NewEvent  # noqa: E402
from syncline.store import open_store  # noqa: E402


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(url: str, n: int, tag: str) -> None:
    store = await open_store(url)
    counter = iter(range(n))

    async def task(k: int) -> None:
        for i in counter:
            r = await store.append("acme", f"w/{tag}-{k}", [NewEvent("test.written", {"tag": tag, "i": i})])
            out(f"ack {r.last_position} {tag} {i}")

    await asyncio.gather(*(task(k) for k in range(8)))
    await store.close()


async def odd_writer(url: str, tag: str, mode: str) -> None:
    store = await open_store(url)
    store._writer.optimistic = False  # an explicit transaction, so there is a COMMIT to hold back
    sa_conn, raw = await store._writer._acquire()

    class Hooked:
        """Delay or break the COMMIT of the real write path, nothing else."""

        def __getattr__(self, name):
            return getattr(raw, name)

        async def execute(self, query, *args):
            if query == "COMMIT":
                if mode == "slow":
                    out("holding")
                    await asyncio.sleep(2.0)
                else:
                    await raw.execute("ROLLBACK")
                    raise RuntimeError("rolled back on purpose")
            return await raw.execute(query, *args)

    hooked = Hooked()

    async def acquire():
        return sa_conn, hooked

    store._writer._acquire = acquire
    try:
        r = await store.append("acme", f"odd/{tag}", [NewEvent("test.written", {"tag": tag, "i": 0})])
        out(f"ack {r.last_position} {tag} 0")
    except Exception as e:
        out(f"failed {type(e).__name__}")
    await store.close()


async def reader(url: str, expected: int) -> None:
    store = await open_store(url, poll_interval_s=0.5)
    seen = 0
    async for page in store.tail(None, all_tenants=True, batch=200):
        for e in page.events:
            out(f"got {e.position} {e.data['tag']} {e.data['i']}")
            seen += 1
        if seen >= expected:
            break
    await store.close()


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "writer":
        asyncio.run(writer(url, int(sys.argv[3]), sys.argv[4]))
    elif mode in ("slow-writer", "rollback-writer"):
        asyncio.run(odd_writer(url, sys.argv[3], mode.split("-")[0]))
    elif mode == "reader":
        asyncio.run(reader(url, int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
