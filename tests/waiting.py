"""Waiting on a condition with a deadline: the one way the tests wait for something to happen.

A bare sleep guesses how long convergence takes; these poll the condition and fail with
what they were waiting for when the deadline passes. (Sleeps left in tests give a
negative check its window: "nothing arrives in the time it would take".)
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

Condition = Callable[[], Any]


def wait_for(condition: Condition, timeout: float, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll a synchronous condition until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(condition: Callable[[], Awaitable[Any] | Any], timeout: float, what: str = "condition",
                interval: float = 0.02) -> Any:
    """Poll a condition (plain or async) on the event loop until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class HandClock:
    """A clock the test moves (``advance``) instead of sleeping: pass it as the gateway's
    ``clock``. ``monotonic`` and ``time`` move together; nothing moves on its own."""

    def __init__(self, start: float = 1_000.0, wall: float | None = None) -> None:
        self._mono = start
        self._wall = time.time() if wall is None else wall

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds


def wait_serving(proc: Any, url: str, log: Callable[[], str], timeout: float = 60) -> None:
    """Wait until a ``syncline serve`` subprocess answers ``{url}/healthz``; if it exits
    first, fail with the end of its log (``log()``) instead of waiting out the deadline."""
    import httpx

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {log()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout, f"{url}/healthz to answer", interval=0.05)
