"""The simulated network: latency, loss, duplication, spikes, resets and partitions.

A connection is an ordered stream (a WebSocket over TCP), so within one direction
of one connection messages arrive in the order they were sent: a lost packet is
retransmitted after an RTO and holds back what follows it (head-of-line
blocking). Reordering happens where it can in reality: between connections, and
between a dead connection's stragglers and its successor (those are dropped by
generation). A reset loses the message and everything after it; both ends notice
one latency later. A partition cuts clients off silently: nothing arrives, and
only timeouts tell either side.

All randomness comes from the simulation's one ``random.Random``.
"""
from __future__ import annotations

import random
from math import exp, log

from .scenarios import Faults

_NV_MAGICCONST = random.NV_MAGICCONST


def _lognormal(rng: random.Random, sigma: float) -> float:
    """``rng.lognormvariate(0.0, sigma)``, the same draws and the same float, without its
    two Python calls (``normalvariate``'s Kinderman-Monahan loop, inlined): a latency is
    drawn for every message."""
    rand = rng.random
    while True:
        u1 = rand()
        u2 = 1.0 - rand()
        z = _NV_MAGICCONST * (u1 - 0.5) / u2
        if z * z / 4.0 <= -log(u2):
            return exp(0.0 + z * sigma)


def _same_as_stdlib() -> bool:
    for seed in range(20):
        a, b = random.Random(seed), random.Random(seed)
        if any(_lognormal(a, 0.6) != b.lognormvariate(0.0, 0.6) for _ in range(50)):
            return False
    return True


if not _same_as_stdlib():  # another Python's ``random``: use it as it is
    def _lognormal(rng: random.Random, sigma: float) -> float:  # noqa: F811
        return rng.lognormvariate(0.0, sigma)


class Channel:
    """One connection between a client and the server."""

    __slots__ = ("client", "gen", "conn_id", "open", "up_at_ms", "down_at_ms")

    def __init__(self, client: int, gen: int) -> None:
        self.client = client
        self.gen = gen
        self.conn_id = 0  # the server's id, once the server accepted it
        self.open = True
        self.up_at_ms = 0  # last scheduled arrival at the server (FIFO)
        self.down_at_ms = 0  # last scheduled arrival at the client (FIFO)


class Network:
    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        self.cut: dict[int, None] = {}  # partitioned clients
        self.quiet = False  # during healing: no loss, dup, resets or spikes
        self.messages = 0
        self.lost = 0
        self.duplicated = 0
        self.resets = 0

    def latency_ms(self) -> int:
        f = self.faults
        ms = _lognormal(self.rng, f.latency_sigma) * f.latency_ms_median
        if not self.quiet and f.spike and self.rng.random() < f.spike:
            ms += self.rng.uniform(0, f.spike_ms_max)
        return max(1, min(int(ms), f.latency_ms_max))

    def reachable(self, client: int) -> bool:
        return client not in self.cut

    def plan(self, ch: Channel, up: bool, now_ms: int) -> tuple[list[int], bool]:
        """Arrival times for one message (two when duplicated; none when lost to a reset
        or a partition) and whether the connection resets now. (Called for every message:
        ``latency_ms`` is inlined, with the same draws in the same order.)"""
        self.messages += 1
        if not ch.open or ch.client in self.cut:
            return [], False  # a partition: silently gone, only timeouts notice
        f = self.faults
        rng = self.rng
        noisy = not self.quiet
        if noisy and f.resets and rng.random() < f.resets:
            self.resets += 1
            return [], True
        ms = _lognormal(rng, f.latency_sigma) * f.latency_ms_median
        if noisy and f.spike and rng.random() < f.spike:
            ms += rng.uniform(0, f.spike_ms_max)
        ms = int(ms)
        t = now_ms + (1 if ms < 1 else f.latency_ms_max if ms > f.latency_ms_max else ms)
        if noisy and f.loss and rng.random() < f.loss:
            self.lost += 1
            t += rng.randint(*f.rto_ms)  # retransmitted
        if up:
            if t < ch.up_at_ms:
                t = ch.up_at_ms  # the stream is ordered
            ch.up_at_ms = t
        else:
            if t < ch.down_at_ms:
                t = ch.down_at_ms
            ch.down_at_ms = t
        if noisy and f.dup and rng.random() < f.dup:
            self.duplicated += 1
            return [t, t], False
        return [t], False
