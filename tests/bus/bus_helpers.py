"""Helpers for the bus tests: waiting on conditions with a deadline, worker processes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Awaitable, Callable

from waiting import until

WORKER = Path(__file__).with_name("bus_worker.py")


async def eventually(
    cond: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0, what: str = "condition"
) -> None:
    try:
        await until(cond, timeout, what)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


class WorkerProc:
    """A bus_worker.py child; its stdout lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors), daemon=True).start()

    @staticmethod
    def _pump(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def handled(self) -> list[tuple[str, str, int]]:
        out = []
        for line in list(self.lines):
            if line.startswith("handled "):
                _, eid, stream, version = line.split()
                out.append((eid, stream, int(version)))
        return out

    @property
    def ready(self) -> bool:
        return any(line.startswith("ready") for line in self.lines)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
