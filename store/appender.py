"""Group commit: concurrent append calls in one process share one transaction.

Whoever calls while a commit is in flight waits for the next one, so batches form
by themselves under load (no timer is needed for throughput); ``max_wait_s`` can
add a short linger to grow batches further. Each caller gets its own result or its
own error: the commit function resolves every future individually.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

from .instruments import caller_span, commit_span

T = TypeVar("T")


class Pending(Generic[T]):
    __slots__ = ("item", "future", "size", "trace")

    def __init__(self, item: T, future: asyncio.Future, size: int) -> None:
        self.item = item
        self.future = future
        self.size = size
        self.trace = caller_span()  # the caller's span, when it is inside a trace (store/instruments.py)


class GroupCommitter(Generic[T]):
    """Gathers calls into batches and hands each batch to ``commit``.

    Up to ``max_in_flight`` batches may be committing at once: while the database
    works on one batch, the event loop resumes the callers of the previous one and
    gathers the next, instead of the two waiting for each other. The store's write
    path keeps positions in commit order whatever the overlap (store/pg_writer.py).
    """

    def __init__(
        self,
        commit: Callable[[list[Pending[T]]], Awaitable[None]],
        *,
        max_batch_calls: int = 1024,
        max_batch_events: int = 4096,
        max_wait_s: float = 0.0,
        max_in_flight: int = 2,
    ) -> None:
        self._commit = commit
        self._max_calls = max_batch_calls
        self._max_events = max_batch_events
        self._max_wait_s = max_wait_s
        self._max_in_flight = max_in_flight
        self._queue: list[Pending[T]] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._closed = False
        self.batches = 0  # observability: commits made
        self.calls = 0

    async def submit(self, item: T, size: int = 1):
        if self._closed:
            raise RuntimeError("the appender is closed")
        loop = asyncio.get_running_loop()
        pending = Pending(item, loop.create_future(), size)
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="syncline-group-commit")
        self._wakeup.set()
        return await pending.future

    def _take_batch(self) -> list[Pending[T]]:
        calls = events = 0
        for i, p in enumerate(self._queue):
            if calls and (calls + 1 > self._max_calls or events + p.size > self._max_events):
                batch, self._queue = self._queue[:i], self._queue[i:]
                return batch
            calls += 1
            events += p.size
        batch, self._queue = self._queue, []
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue or len(self._in_flight) >= self._max_in_flight:
                if self._closed and not self._queue:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_wait_s:
                await asyncio.sleep(self._max_wait_s)
            batch = self._take_batch()
            task = loop.create_task(self._commit_one(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _commit_one(self, batch: list[Pending[T]]) -> None:
        span = commit_span([p.trace for p in batch], calls=len(batch), events=sum(p.size for p in batch))
        try:
            if span is None:
                await self._commit(batch)
            else:
                with span:
                    await self._commit(batch)
        except BaseException as e:  # resolve every caller, then keep serving
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            if not isinstance(e, Exception):
                raise
        self.batches += 1
        self.calls += len(batch)

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking calls; commit what is already queued (within the timeout), then stop."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), drain_timeout_s)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=drain_timeout_s)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(RuntimeError("the appender is closed"))
        self._queue.clear()
