"""A consumer group over the simulated log, with retries and a dead-letter queue.

A model of store/bus (the real bus is async and lives elsewhere): partitions by
stream (crc32, never ``hash()``: that is salted per process), leased to live
consumers round-robin; a handler that fails on poison events always and on
others now and then; ``max_attempts`` tries, then the event is dead-lettered and
the partition moves on. Positions are committed every few events, so a crash
redelivers what was handled since the last commit (at least once).

Accounting (the checker): every event of the consumed tenant is handled or
dead-lettered, never both; every poison event is dead-lettered.
"""
from __future__ import annotations

import random
import zlib
from typing import Any


def is_poison(ev: Any) -> bool:
    data = ev.data if isinstance(ev.data, dict) else {}
    lww = data.get("lww")
    return isinstance(lww, dict) and lww.get("poison") is True


class ConsumerGroup:
    def __init__(self, rng: random.Random, tenant: str, *, consumers: int = 3, partitions: int = 8,
                 max_attempts: int = 3, transient_failure: float = 0.05, commit_every: int = 5) -> None:
        self.rng = rng
        self.tenant = tenant
        self.partitions = partitions
        self.max_attempts = max_attempts
        self.transient_failure = transient_failure
        self.commit_every = commit_every
        self.alive = [True] * consumers
        self.committed = [0] * partitions  # durable position per partition
        self.cursor = [0] * partitions  # in-memory position of the partition's owner
        self.since_commit = [0] * partitions
        self.attempts: dict[int, int] = {}
        self.handled: dict[int, int] = {}  # position -> times handled (>1: redelivered)
        self.dlq: dict[int, str] = {}  # position -> reason
        self.crashes = 0

    def owner(self, partition: int) -> int | None:
        live = [i for i, a in enumerate(self.alive) if a]
        return live[partition % len(live)] if live else None

    def crash(self, consumer: int) -> None:
        """The consumer dies: its uncommitted progress is lost; others take its partitions."""
        if not self.alive[consumer] or sum(self.alive) <= 1:
            return
        self.crashes += 1
        self.alive[consumer] = False
        for p in range(self.partitions):
            self.cursor[p] = self.committed[p]
            self.since_commit[p] = 0

    def recover(self, consumer: int) -> None:
        self.alive[consumer] = True

    def step(self, log: Any, budget: int = 64) -> int:
        """Process up to ``budget`` events per partition; returns how many were attempted."""
        done = 0
        for p in range(self.partitions):
            if self.owner(p) is None:
                continue
            after = self.cursor[p]
            for ev in log.read(self.tenant, after, budget * self.partitions):
                if zlib.crc32(ev.stream.encode()) % self.partitions != p:
                    self.cursor[p] = ev.position
                    continue
                done += 1
                if not self._handle(ev):
                    break  # retry this event next step
                self.cursor[p] = ev.position
                self.since_commit[p] += 1
                if self.since_commit[p] >= self.commit_every:
                    self.committed[p] = self.cursor[p]
                    self.since_commit[p] = 0
                if done >= budget:
                    break
        return done

    def flush(self) -> None:
        for p in range(self.partitions):
            self.committed[p] = self.cursor[p]
            self.since_commit[p] = 0

    def _handle(self, ev: Any) -> bool:
        pos = ev.position
        if pos in self.dlq:
            return True  # redelivered after a crash: already settled
        if pos in self.handled:  # redelivered: the idempotent handler succeeds again
            self.handled[pos] += 1
            return True
        if is_poison(ev) or self.rng.random() < self.transient_failure:
            n = self.attempts[pos] = self.attempts.get(pos, 0) + 1
            if n >= self.max_attempts:
                self.dlq[pos] = "poison" if is_poison(ev) else "retries_exhausted"
                return True
            return False
        self.handled[pos] = self.handled.get(pos, 0) + 1
        return True

    def accounting_errors(self, log: Any) -> list[str]:
        errors = []
        after = 0
        while True:
            page = log.read(self.tenant, after, 4096)
            if not page:
                break
            after = page[-1].position
            for ev in page:
                p = ev.position
                h, d = p in self.handled, p in self.dlq
                if h and d:
                    errors.append(f"event {p} both handled and dead-lettered")
                elif not h and not d:
                    errors.append(f"event {p} neither handled nor dead-lettered")
                elif is_poison(ev) and not d:
                    errors.append(f"poison event {p} was handled")
                if len(errors) >= 10:
                    return errors
        return errors

    def summary(self) -> dict[str, int]:
        return {"handled": len(self.handled), "redelivered": sum(n - 1 for n in self.handled.values()),
                "dead_lettered": len(self.dlq), "poison": sum(1 for r in self.dlq.values() if r == "poison"),
                "consumer_crashes": self.crashes}
