"""The in-process doorbell: "the log grew past position P".

Tails wait on it instead of polling hot; they never trust it for content (they read
the log from their own cursor), so a missed ring costs latency, never correctness.
Cross-process peers (PostgreSQL LISTEN/NOTIFY, Redis pub/sub) feed one of these.
"""
from __future__ import annotations

import asyncio


class LocalDoorbell:
    def __init__(self) -> None:
        self.latest = 0
        self._waiters: set[asyncio.Future] = set()

    async def ring(self, tenant: str, position: int) -> None:
        self.ring_nowait(position)

    def ring_nowait(self, position: int) -> None:
        if position <= self.latest:
            return
        self.latest = position
        waiters, self._waiters = self._waiters, set()
        for f in waiters:
            if not f.done():
                f.set_result(True)

    async def wait(self, after: int, timeout: float) -> bool:
        if self.latest > after:
            return True
        f = asyncio.get_running_loop().create_future()
        self._waiters.add(f)
        try:
            # (asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the result of
            # a future that completes in the same turn as a cancel of the caller, and the
            # cancel is lost: a tail cancelled as the bell rang kept running, and the
            # gateway's shutdown waited for it.)
            async with asyncio.timeout(timeout):
                return await f
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(f)

    async def close(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for f in waiters:
            if not f.done():
                f.set_result(False)
