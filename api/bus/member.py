"""A consumer group member: competing consumers over the log, in one process or many.

The group's events are split into partitions by (tenant, stream) (api/bus/events.py).
A member holds leases on some partitions (store/bus/groups.py says how leases are
shared out and fenced) and runs one worker task per partition, so events of one
stream are handled in order, by one member at a time, while partitions run in
parallel. One reader task per member reads the log (server-side filter, tenant
scope) and feeds the workers; each worker advances its partition's checkpoint past
what it handled, dead-lettered, or what the filter skipped.

Delivery is at least once: a checkpoint is written every ``commit_interval_s``, so a
member that dies hands its partitions over (after its lease expires) with up to that
much work done but not yet checkpointed, and the next owner delivers it again. The
idempotent helper (api/bus/idempotent.py) turns that into exactly-once effects.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from engine.errors import SynclineError, ValidationError
from engine.events import RecordedEvent
from engine.filters import EventFilter
from store.bus import DeadLetter, GroupStore
from store.bus._db import engines, now_us
from store.bus.groups import Attempt, Lease
from store.bus_schema import SCOPE_ALL

from .delivery import Delivery, Failure, Handler, RetryPolicy, attempt
from .dlq import DeadLetterQueue
from .events import event_from_doc, partition_of

log = logging.getLogger("syncline.bus")
GROUP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@~+=-")


def check_group_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 128 or not set(name) <= GROUP_NAME_CHARS:
        raise ValidationError(f"invalid group name {str(name)[:80]!r} (letters, digits and ._:@~+=- only)")
    return name


def scope_of(tenant: str | None, all_tenants: bool) -> str:
    """A group reads one tenant, or — said explicitly — all of them (scope ``*``)."""
    if tenant is None and not all_tenants:
        raise ValidationError("a subscription across all tenants must say all_tenants=True")
    if tenant is not None and all_tenants:
        raise ValidationError("pass either a tenant or all_tenants=True, not both")
    return SCOPE_ALL if all_tenants else tenant  # type: ignore[return-value]


@dataclass
class MemberStats:
    handled: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    redelivered_from_dlq: int = 0


class _Worker:
    """One owned partition: a bounded queue (chunks of events, checkpoint marks, requeued
    dead letters) and the task that works through it."""

    def __init__(self, lease: Lease, attempts: dict[str, Attempt], queue_max: int) -> None:
        self.partition = lease.partition
        self.epoch = lease.epoch
        self.dispatched = lease.position  # every event of the partition up to here is queued or skipped
        self.done = lease.position  # ... handled, dead-lettered or skipped
        self.committed = lease.position
        self.attempts = attempts
        self.queue: asyncio.Queue = asyncio.Queue(queue_max)
        self.stopping = False
        self.task: asyncio.Task | None = None

    def stop(self) -> None:
        self.stopping = True
        while not self.queue.empty():  # unblock a reader waiting to put
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class GroupMember:
    def __init__(
        self,
        store: Any,
        group: str,
        handler: Handler,
        *,
        tenant: str | None = None,
        all_tenants: bool = False,
        filter: EventFilter | None = None,
        partitions: int = 16,
        member_id: str | None = None,
        lease_s: float = 10.0,
        heartbeat_s: float | None = None,
        policy: RetryPolicy = RetryPolicy(),
        batch: int = 500,
        commit_interval_s: float = 0.05,
        queue_max: int = 64,
        include_system_streams: bool = False,
        dlq: DeadLetterQueue | None = None,
        mirror_checkpoint: bool = True,
        start_at: str = "earliest",
    ) -> None:
        self.store = store
        self.group = check_group_name(group)
        self.handler = handler
        self.scope = scope_of(tenant, all_tenants)
        self.tenant = tenant
        self.all_tenants = all_tenants
        self.filter = filter
        self.partitions = partitions
        self.id = member_id or f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s or lease_s / 3
        self.policy = policy
        self.batch = batch
        self.commit_interval_s = commit_interval_s
        self.queue_max = queue_max
        self.include_system = include_system_streams
        self.dlq = dlq or DeadLetterQueue(store)
        self.mirror_checkpoint = mirror_checkpoint
        if start_at not in ("earliest", "latest"):
            raise ValidationError("start_at is 'earliest' (the whole log) or 'latest' (only new events)")
        self.start_at = start_at  # where a group that does not exist yet begins
        self.stats = MemberStats()
        self._gs = GroupStore(store, self.scope, self.group)
        self._w, _ = engines(store)
        self._workers: dict[int, _Worker] = {}
        self._tasks: list[asyncio.Task] = []
        self._reset = True
        self._wake = asyncio.Event()
        self._lease_deadline = 0.0
        self._rebalanced = asyncio.Event()
        self._rebalance_lock = asyncio.Lock()
        self._last_mirror = 0.0

    # ---------------------------------------------------------------- lifecycle

    @property
    def owned(self) -> list[int]:
        return sorted(self._workers)

    async def start(self) -> "GroupMember":
        if self.partitions < 1 or self.partitions > 4096:
            raise ValidationError("partitions must be 1..4096")
        initial = await self.store.head_position() if self.start_at == "latest" else 0
        self.partitions = await self._gs.ensure(self.partitions, self._filter_doc(), initial)
        await self._rebalance()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name=f"bus-hb-{self.group}"),
            loop.create_task(self._read_loop(), name=f"bus-read-{self.group}"),
            loop.create_task(self._commit_loop(), name=f"bus-commit-{self.group}"),
        ]
        return self

    async def stop(self) -> None:
        """Leave the group: finish the event in hand, checkpoint, release every partition."""
        await self._cancel_tasks()
        async with self._rebalance_lock:
            for w in list(self._workers.values()):
                await self._stop_worker(w)
            await self._flush()
            self._workers.clear()
            with contextlib.suppress(SynclineError):
                await self._gs.leave(self.id)

    async def abort(self) -> None:
        """Stop without checkpointing or releasing anything, as a crash would (for tests)."""
        await self._cancel_tasks()
        for w in self._workers.values():
            if w.task is not None:
                w.task.cancel()
        await asyncio.gather(*(w.task for w in self._workers.values() if w.task), return_exceptions=True)
        self._workers.clear()

    async def __aenter__(self) -> "GroupMember":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _filter_doc(self) -> Any:
        f = self.filter
        if f is None:
            return None
        return {"stream_prefixes": list(f.stream_prefixes), "streams": list(f.streams), "types": list(f.types),
                "where": [[p.path, p.op, list(p.value) if p.op == "in" else p.value] for p in f.where]}

    # --------------------------------------------------------------- membership

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._rebalance()
            except SynclineError as e:  # the database blinked: our leases may lapse; workers pause
                log.warning("bus %s/%s heartbeat failed: %s", self.scope, self.group, e.code)

    async def _rebalance(self) -> None:
        async with self._rebalance_lock:
            lease_us = int(self.lease_s * 1_000_000)
            t0 = time.monotonic()
            ms = await self._gs.heartbeat(self.id, socket.gethostname(), os.getpid(), lease_us)
            # Trust the lease a heartbeat's length less than granted: by then the next
            # heartbeat renewed it, or workers pause before another member may take over.
            self._lease_deadline = t0 + self.lease_s - self.heartbeat_s
            for p, w in list(self._workers.items()):
                lease = ms.owned.get(p)
                if lease is None or lease.epoch != w.epoch:
                    log.warning("bus %s/%s lost partition %d", self.scope, self.group, p)
                    await self._stop_worker(w, cancel=True)
                    del self._workers[p]
            target = ms.fair_share(self.id, self.partitions)
            owned = sorted(self._workers)
            if len(owned) > target:
                extra = owned[target:]
                for p in extra:
                    await self._stop_worker(self._workers[p])
                await self._flush()
                for p in extra:
                    del self._workers[p]
                await self._gs.release(self.id, extra)
            elif len(owned) < target:
                for lease in await self._gs.claim(self.id, target - len(owned), lease_us):
                    attempts = await self._gs.load_attempts(lease.partition)
                    self._add_worker(_Worker(lease, attempts, self.queue_max))
            await self._claim_requeued(lease_us)
            if self.mirror_checkpoint and time.monotonic() - self._last_mirror > 5 * self.heartbeat_s:
                # The store's prune keeps every event above the lowest checkpoint.
                self._last_mirror = time.monotonic()
                await self.store.save_checkpoint(f"bus/{self.group}", self.scope, await self._gs.low_watermark())
            self._rebalanced.set()

    def _add_worker(self, w: _Worker) -> None:
        self._workers[w.partition] = w
        w.task = asyncio.get_running_loop().create_task(self._work(w), name=f"bus-p{w.partition}-{self.group}")
        self._reset = True
        self._wake.set()

    async def _stop_worker(self, w: _Worker, *, cancel: bool = False) -> None:
        w.stop()
        if w.task is not None:
            if cancel:
                w.task.cancel()
            await asyncio.gather(w.task, return_exceptions=True)

    async def _claim_requeued(self, lease_us: int) -> None:
        if not self._workers:
            return
        entries = await self.dlq.entries.claim_requeued(
            scope=self.scope, group=self.group, partitions=self.owned, member=self.id, claim_us=lease_us
        )
        for e in entries:
            w = self._workers.get(e.partition)
            if w is not None and not w.stopping:
                # A full queue leaves the entry claimed; the claim expires and it is taken again.
                with contextlib.suppress(asyncio.QueueFull):
                    w.queue.put_nowait(e)

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        cursor = 0
        bell = self.store.doorbell
        while True:
            try:
                if self._reset:
                    self._reset = False
                    if not self._workers:
                        self._wake.clear()
                        await self._wait_wake(self.heartbeat_s)
                        self._reset = True
                        continue
                    cursor = min(w.dispatched for w in self._workers.values())
                if self.all_tenants:
                    page = await self.store.read_log(None, after=cursor, limit=self.batch, filter=self.filter,
                                                     all_tenants=True)
                else:
                    page = await self.store.read_log(self.tenant, after=cursor, limit=self.batch, filter=self.filter)
                # Only workers that have seen everything up to the cursor may take this page
                # (a partition claimed meanwhile starts from its own checkpoint after a reset).
                eligible = {p: w for p, w in self._workers.items() if w.dispatched >= cursor and not w.stopping}
                n = self.partitions
                chunks: dict[int, list[RecordedEvent]] = {}
                for ev in page.events:
                    if not self.include_system and ev.stream[0] == "$":
                        continue
                    p = partition_of(ev, n)
                    w = eligible.get(p)
                    if w is not None and ev.position > w.dispatched:
                        chunks.setdefault(p, []).append(ev)
                for p, evs in chunks.items():
                    w = eligible[p]
                    if not w.stopping:
                        await w.queue.put(evs)  # one item per partition per page: cheap and bounded
                        w.dispatched = evs[-1].position
                for w in eligible.values():
                    if page.next_after > w.dispatched and not w.stopping:
                        w.dispatched = page.next_after
                        await w.queue.put(page.next_after)
                cursor = page.next_after
                if not page.events and not self._reset:
                    await bell.wait(cursor, min(self.store.poll_interval_s, self.heartbeat_s))
            except asyncio.CancelledError:
                raise
            except SynclineError as e:
                log.warning("bus %s/%s read failed: %s", self.scope, self.group, e.code)
                await asyncio.sleep(0.5)

    async def _wait_wake(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ working

    async def _work(self, w: _Worker) -> None:
        while True:
            item = await w.queue.get()
            if w.stopping or item is None:
                return
            if type(item) is int:  # a checkpoint mark: everything of this partition up to it is queued
                w.done = max(w.done, item)
                continue
            for one in item if type(item) is list else (item,):
                if not await self._handle_safely(w, one):
                    return
                if type(one) is not DeadLetter:
                    w.done = one.position

    async def _handle_safely(self, w: _Worker, item: RecordedEvent | DeadLetter) -> bool:
        while True:
            try:
                if type(item) is DeadLetter:
                    return await self._redeliver(w, item)
                return await self._handle(w, item)
            except SynclineError as e:  # the store failed us, not the handler: try again
                log.warning("bus %s/%s p%d store error: %s", self.scope, self.group, w.partition, e.code)
                await asyncio.sleep(0.5)
                if w.stopping:
                    return False

    async def _lease_ok(self, w: _Worker) -> bool:
        while time.monotonic() >= self._lease_deadline:
            if w.stopping:
                return False
            self._rebalanced.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._rebalanced.wait(), self.heartbeat_s)
        return not w.stopping

    def _delivery(self, ev: RecordedEvent, n: int, dead_letter_id: str | None = None) -> Delivery:
        return Delivery(ev, group=self.group, scope=self.scope, member=self.id, attempt=n,
                        dead_letter_id=dead_letter_id, tx=self._w.begin)

    async def _run_attempts(
        self, w: _Worker, ev: RecordedEvent, prior: Attempt | None, dead_letter_id: str | None, persist: bool
    ) -> Attempt | None | bool:
        """Deliver until acked (None), out of attempts (the last Attempt), or the partition is
        gone (False)."""
        n = prior.attempts if prior else 0
        first = prior.first_failure_us if prior else 0
        while True:
            if not await self._lease_ok(w):
                return False
            n += 1
            failure: Failure | None = await attempt(self.handler, self._delivery(ev, n, dead_letter_id), self.policy)
            if failure is None:
                if persist and n > 1:
                    await self._gs.clear_attempt(ev.id)
                return None
            self.stats.failed_attempts += 1
            now = now_us()
            first = first or now
            att = Attempt(ev.id, ev.position, n, first, now, failure.reason, failure.trace)
            if n >= self.policy.max_attempts:
                return att
            if persist:
                await self._gs.record_attempt(w.partition, self.id, att)
            delay = failure.delay_s if failure.delay_s is not None else self.policy.delay_after(n)
            if delay > 0:
                await asyncio.sleep(delay)

    async def _handle(self, w: _Worker, ev: RecordedEvent) -> bool:
        prior = w.attempts.pop(ev.id, None) if w.attempts else None
        if prior is not None and prior.attempts >= self.policy.max_attempts:
            prior = Attempt(prior.event_id, prior.position, self.policy.max_attempts - 1, prior.first_failure_us,
                            prior.last_failure_us, prior.reason, prior.trace)
        out = await self._run_attempts(w, ev, prior, None, persist=True)
        if out is False:
            return False
        if out is None:
            self.stats.handled += 1
            return True
        await self.dlq.dead_letter(scope=self.scope, group=self.group, partition=w.partition, event=ev,
                                   attempt=out, member=self.id)
        self.stats.dead_lettered += 1
        return True

    async def _redeliver(self, w: _Worker, entry: DeadLetter) -> bool:
        ev = event_from_doc(entry.event, entry.data)
        out = await self._run_attempts(w, ev, None, entry.id, persist=False)
        if out is False:
            return False  # the claim expires and the partition's next owner delivers it
        if out is None:
            await self.dlq.resolved(entry, self.id)
            self.stats.redelivered_from_dlq += 1
            return True
        await self.dlq.dead_letter(scope=self.scope, group=self.group, partition=w.partition, event=ev,
                                   attempt=out, member=self.id)
        self.stats.dead_lettered += 1
        return True

    # -------------------------------------------------------------- checkpoints

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval_s)
            try:
                await self._flush()
            except SynclineError as e:
                log.warning("bus %s/%s checkpoint failed: %s", self.scope, self.group, e.code)

    async def _flush(self) -> None:
        dirty = [(w, w.done) for w in list(self._workers.values()) if w.done > w.committed]
        if not dirty:
            return
        await self._gs.commit(self.id, [(w.partition, w.epoch, done) for w, done in dirty])
        for w, done in dirty:
            w.committed = max(w.committed, done)
