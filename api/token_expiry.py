"""Connections end when their token does: one timer task per gateway for the Yjs sockets.

A native connection's expiry is its session's deadline (engine/session.py); a Yjs socket
has no session core, and a timer per socket would cost memory on every idle connection,
so the gateway keeps one heap of ``(exp, conn_id)`` and one task that closes each socket
still open with that token at ``exp`` (4401 ``token_expired``). Entries of sockets that
closed earlier are skipped when they come up, and the heap is rebuilt when they pile up.
"""
from __future__ import annotations

import asyncio
import heapq
from typing import TYPE_CHECKING

from .logging import log

if TYPE_CHECKING:
    from .gateway import Gateway

TICK_MAX_S = 1.0  # the task re-reads the clock at least this often (an injected clock moves by hand)


class ExpiryWatch:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.heap: list[tuple[float, str]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="token-expiry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def watch(self, conn_id: str, exp: float) -> None:
        heap = self.heap
        if len(heap) > 2 * len(self.gw.connections) + 64:  # mostly closed sockets: rebuild
            live = self.gw.connections
            self.heap = heap = [e for e in heap if e[1] in live]
            heapq.heapify(heap)
        heapq.heappush(heap, (exp, conn_id))
        if heap[0][1] == conn_id and self._wake is not None:
            self._wake.set()

    def due(self, now: float) -> list[str]:
        """Pop the entries due at ``now``; the ids of connections still open."""
        out = []
        heap, live = self.heap, self.gw.connections
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            if cid in live:
                out.append(cid)
        return out

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            now = self.gw.clock.time()
            for cid in self.due(now):
                conn = self.gw.connections.get(cid)
                if conn is not None and conn.principal.exp <= now:
                    log.info("ws.token_expired", conn=cid, user=conn.principal.user)
                    conn.token_ended("token_expired")
            delay = TICK_MAX_S if not self.heap else max(0.0, min(TICK_MAX_S, self.heap[0][0] - now))
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):  # (not wait_for: see store/doorbell.py)
                    await self._wake.wait()
            except TimeoutError:
                pass
