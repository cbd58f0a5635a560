"""The listener loop shared by the cross-process doorbells (PostgreSQL LISTEN/NOTIFY, Redis pub/sub).

A ``ListeningDoorbell`` is a ``LocalDoorbell`` with one background task that keeps a
subscription to the other processes' rings: connect, deliver messages as local rings,
and when the service drops, mark itself silent (``connected`` cleared) and reconnect
with exponential backoff. Tails never depend on it: while it is silent they poll the
store (store/tail.py), so an outage costs latency, never correctness.

A backend supplies the transport-specific parts:

``_subscribe()``    open the connection and subscribe to the channel;
``_deliver()``      turn messages into ``ring_nowait(position)`` until the connection
                    ends (return) or fails (raise one of ``_lost_errors``);
``_unsubscribe()``  drop the connection of this attempt (after a loss and on close);
``_release()``      optional: free long-lived resources on ``close()``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from .doorbell import LocalDoorbell


class ListeningDoorbell(LocalDoorbell):
    _task_name = "syncline-doorbell"
    _log = logging.getLogger("syncline.store.doorbell")
    _lost_what = "doorbell subscription"  # for the warning: "<what> lost (Error); retrying in 0.1s"
    # Failures that mean "the service went away": logged, then retried. Anything else is a bug
    # and ends the task (tails keep polling).
    _lost_errors: tuple[type[BaseException], ...] = (Exception,)
    _first_delay_s = 0.1
    _max_delay_s = 5.0

    def __init__(self) -> None:
        super().__init__()
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()  # set while subscribed; tests and readiness wait on it

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name=self._task_name)

    async def _listen(self) -> None:
        delay = self._first_delay_s
        while True:
            try:
                await self._subscribe()
                self.connected.set()
                delay = self._first_delay_s
                await self._deliver()
            except asyncio.CancelledError:
                raise
            except self._lost_errors as e:  # the service went away: tails poll meanwhile
                self._log.warning("%s lost (%s); retrying in %.1fs", self._lost_what, type(e).__name__, delay)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await self._unsubscribe()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._release()
        await super().close()

    # ------------------------------------------------------------------ backend hooks

    async def _subscribe(self) -> None:
        raise NotImplementedError

    async def _deliver(self) -> None:
        raise NotImplementedError

    async def _unsubscribe(self) -> None:
        raise NotImplementedError

    async def _release(self) -> None:
        pass
