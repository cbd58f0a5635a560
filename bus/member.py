"""A consumer group member: competing consumers over the log, in one process or many.

The group's events are split into partitions by (tenant, stream) (bus/events.py).
A member holds leases on some partitions (store/bus/groups.py says how leases are
shared out and fenced) and runs one worker task per partition, so events of one
stream are handled in order, by one member at a time, while partitions run in
parallel. One reader per process and (store, scope, filter) reads the log and hands
each page to every member attached to it (bus/reader.py); a member dispatches the
events of the partitions it owns to their workers; each worker advances its
partition's checkpoint past what it handled, dead-lettered, or what the filter skipped.

Delivery is at least once: a checkpoint is written every ``commit_interval_s``, so a
member that dies hands its partitions over (after its lease expires) with up to that
much work done but not yet checkpointed, and the next owner delivers it again. The
idempotent helper (bus/idempotent.py) turns that into exactly-once effects.

A handler that kills its process counts as a failed attempt (store/bus/groups.py
says how: in-flight marks, and attempts recorded before the handler runs where a
crash is suspected), so a poison event that crashes workers reaches the dead-letter
queue after ``max_attempts`` crashes instead of being redelivered forever.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from syncline.engine.errors import SynclineError, ValidationError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter
from syncline.store.bus import DeadLetter, GroupStore
from syncline.store.bus._db import engines, now_us
from syncline.store.bus.groups import CRASH_REASON, Attempt, Lease
from syncline.store.bus_schema import SCOPE_ALL

from .delivery import Batch, Delivery, Failure, Handler, RetryPolicy, attempt, attempt_batch, one_by_one
from .dlq import DeadLetterQueue
from .events import event_from_doc, partition_of
from .observe import handler_time
from .reader import LogReader, PageSplit, reader_for

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


_recorded_attempt_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = (
    weakref.WeakKeyDictionary()
)


def recorded_attempt_lock() -> asyncio.Lock:
    """The process's lock (per event loop) around attempts recorded before they run."""
    loop = asyncio.get_running_loop()
    lock = _recorded_attempt_locks.get(loop)
    if lock is None:
        lock = _recorded_attempt_locks[loop] = asyncio.Lock()
    return lock


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
        self.marked = max(lease.inflight, lease.position)  # the durable in-flight mark covers up to here
        # The previous owner died with events up to here possibly in its handler: until
        # past it, record every attempt before running it (so a crash counts).
        self.suspect_until = lease.inflight if lease.inflight > lease.position else 0
        self.consumed = 0  # events handled since the last checkpoint write (added to bus_partitions.consumed)
        self.attempts = attempts
        self.queue: asyncio.Queue = asyncio.Queue(queue_max)
        self.stopping = False
        self.idle = False  # waiting for the queue, no event in hand
        self.task: asyncio.Task | None = None

    def stop(self) -> None:
        self.stopping = True
        idle = self.idle
        while not self.queue.empty():  # unblock a reader waiting to put
            item = self.queue.get_nowait()
            # Page ends queued ahead of any event: nothing of the partition is pending up
            # to them, so the final checkpoint may pass them.
            if idle and type(item) is int:
                self.done = max(self.done, item)
            else:
                idle = False
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
        mark_ahead: int | None = None,
        handler_in_process: bool = True,
        reader_group: str | None = None,
        batched: bool = False,
    ) -> None:
        self.store = store
        self.group = check_group_name(group)
        self.handler = handler
        # A batched handler takes a Batch (bus/delivery.py); retries, dead-letter
        # redeliveries and suspect ranges still go one event at a time, as a batch of one.
        self.batched = batched
        self._single: Handler = one_by_one(handler) if batched else handler  # type: ignore[arg-type]
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
        # How far past what is queued the in-flight mark reaches (log positions; see _mark).
        self.mark_ahead = mark_ahead if mark_ahead is not None else 4 * batch
        # False when the handler only hands events to a consumer elsewhere (api/bus_sessions.py):
        # that consumer's crash is seen as a lease running out, not as this process dying, so
        # its recorded attempts need not wait for the process-wide lock below (a slow remote
        # retry would otherwise hold up every other group's retries in this process).
        self.handler_in_process = handler_in_process
        # Members of one process share a log reader per (store, scope, filter), and a member
        # whose queues are full holds the page for all of them (bus/reader.py). A name here
        # gives the member a reader shared only with members of the same name: remote
        # consumers (api/bus_sessions.py) use it so one stalled service cannot stall the others.
        self.reader_group = reader_group
        self._span = 0  # log positions the last page covered (see _ahead)
        self.stats = MemberStats()
        self._gs = GroupStore(store, self.scope, self.group)
        self._w, _ = engines(store)
        self._workers: dict[int, _Worker] = {}
        self._tasks: list[asyncio.Task] = []
        self._reader: LogReader | None = None
        self._steps: set[asyncio.Future] = set()
        self._marking: asyncio.Future | None = None
        self._mark_lock = asyncio.Lock()
        self._lease_deadline = 0.0
        self._rebalanced = asyncio.Event()
        self._rebalance_lock = asyncio.Lock()
        self._last_mirror = 0.0

    # ---------------------------------------------------------------- lifecycle

    @property
    def owned(self) -> list[int]:
        return sorted(self._workers)

    def giving_up(self, event: RecordedEvent) -> bool:
        """Whether this member no longer handles the event's partition, or is letting it go
        (a rebalance moves it away, or the member stops): a handler waiting on someone
        else for this event should give it back rather than hold the hand-over up."""
        w = self._workers.get(partition_of(event, self.partitions))
        return w is None or w.stopping

    async def start(self) -> "GroupMember":
        if self.partitions < 1 or self.partitions > 4096:
            raise ValidationError("partitions must be 1..4096")
        initial = await self.store.head_position() if self.start_at == "latest" else 0
        self.partitions = await self._gs.ensure(self.partitions, self._filter_doc(), initial)
        await self._rebalance()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name=f"bus-hb-{self.group}"),
            loop.create_task(self._commit_loop(), name=f"bus-commit-{self.group}"),
        ]
        self._reader = reader_for(self)
        self._reader.attach(self)
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
            with contextlib.suppress(SynclineError):
                await self._mirror()

    async def abort(self) -> None:
        """Stop without checkpointing or releasing anything, as a crash would (for tests)."""
        await self._cancel_tasks()
        for w in self._workers.values():
            w.stop()  # frees its queue: the shared reader may be waiting to put into it
            if w.task is not None:
                w.task.cancel()
        await asyncio.gather(*(w.task for w in self._workers.values() if w.task), return_exceptions=True)
        self._workers.clear()

    async def __aenter__(self) -> "GroupMember":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _cancel_tasks(self) -> None:
        if self._reader is not None:
            await self._reader.detach(self)
            self._reader = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*self._steps, return_exceptions=True)

    async def _guarded(self, step: Any) -> Any:
        """Run a database step of a background loop so that stopping cannot cut it off
        halfway: a transaction cancelled mid-statement can leave its connection (and on
        SQLite, the write lock) held. Stopping cancels the loop and waits for the step."""
        t = asyncio.ensure_future(step)
        self._steps.add(t)
        t.add_done_callback(self._steps.discard)
        return await asyncio.shield(t)

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
                await self._guarded(self._rebalance())
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
                if self._reader is not None:
                    self._reader.reset()  # read fewer partitions from now on
            elif len(owned) < target:
                leases = await self._gs.claim(self.id, target - len(owned), lease_us)
                for lease in leases:
                    attempts = await self._gs.load_attempts(lease.partition)
                    self._add_worker(_Worker(lease, attempts, self.queue_max))
                if leases:
                    # Mark the new partitions before their first events arrive: otherwise
                    # every worker's first chunk waits for that write (a commit, some ms).
                    self._mark_in_background()
            await self._claim_requeued(lease_us)
            if time.monotonic() - self._last_mirror > 5 * self.heartbeat_s:
                await self._mirror()
            self._rebalanced.set()

    async def _mirror(self) -> None:
        """Mirror the group's low watermark as checkpoint ``bus/<group>``: the store's prune
        keeps every event above the lowest checkpoint. Written every few heartbeats and
        when a member leaves; prune also brings it up to date first (store/bus/groups.py
        refresh_mirrors), so a mirror never holds the log back further than the group."""
        if self.mirror_checkpoint:
            self._last_mirror = time.monotonic()
            await self.store.save_checkpoint(f"bus/{self.group}", self.scope, await self._gs.low_watermark())

    def _add_worker(self, w: _Worker) -> None:
        self._workers[w.partition] = w
        w.task = asyncio.get_running_loop().create_task(self._work(w), name=f"bus-p{w.partition}-{self.group}")
        if self._reader is not None:
            self._reader.reset()

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

    def read_from(self) -> int | None:
        """Where the shared reader must read from for this member (None: it needs nothing)."""
        live = [w.dispatched for w in self._workers.values() if not w.stopping]
        return min(live) if live else None

    def held_partitions(self) -> list[int]:
        """The partitions this member's live workers need events of (the reader reads those)."""
        return [p for p, w in self._workers.items() if not w.stopping]

    async def dispatch(self, split: PageSplit, cursor: int) -> None:
        """Queue a page's events (read after ``cursor``) to the workers of the partitions
        they belong to: one item per worker per page, the events and the page's end."""
        page = split.page
        # Only workers that have seen everything up to the cursor may take this page
        # (a partition claimed meanwhile starts from its own checkpoint after a reset).
        # Nor workers of partitions the page was not read for (claimed since).
        eligible = [w for w in self._workers.values() if w.dispatched >= cursor and not w.stopping
                    and split.serves(self.partitions, w.partition)]
        if not eligible:
            return
        parts = split.by_partition(self.partitions, self.include_system)
        end = page.next_after
        self._span = end - cursor
        for w in eligible:
            evs = parts.get(w.partition)
            if evs and evs[0].position <= w.dispatched:  # after a rewind: skip what is queued
                evs = [ev for ev in evs if ev.position > w.dispatched]
            if w.stopping:
                continue
            if evs:
                w.dispatched = max(end, evs[-1].position)
                await w.queue.put((evs, end))
            elif end > w.dispatched:
                w.dispatched = end
                await w.queue.put(end)
        # Renew in-flight marks in the background when half their reach is used, so
        # workers seldom wait for one (they still do, in _mark, if this falls behind).
        if self._marking is None and any(
            w.dispatched + self._ahead // 2 > w.marked for w in eligible if not w.stopping
        ):
            self._mark_in_background()

    def _mark_in_background(self) -> None:
        if self._marking is None:
            self._marking = asyncio.ensure_future(self._mark_soon())
            self._steps.add(self._marking)
            self._marking.add_done_callback(self._steps.discard)

    async def _mark_soon(self) -> None:
        try:
            live = [w for w in self._workers.values() if not w.stopping]
            if live:
                await self._mark(live[0], float("inf"), retry=False)  # renews every worker that needs it
        except SynclineError:
            pass  # a worker that needs the mark writes it itself
        finally:
            self._marking = None

    # ------------------------------------------------------------------ working

    async def _work(self, w: _Worker) -> None:
        while True:
            w.idle = True
            item = await w.queue.get()
            w.idle = False
            if w.stopping or item is None:
                return
            kind = type(item)
            if kind is int:  # a checkpoint mark: everything of this partition up to it is queued
                w.done = max(w.done, item)
                continue
            if kind is DeadLetter:
                if not await self._handle_safely(w, item):
                    return
                continue
            evs, upto = item
            if w.marked < evs[-1].position and not await self._mark(w, evs[-1].position):
                return
            if self.batched:
                if not await self._work_batched(w, evs):
                    return
            else:
                for ev in evs:
                    if not await self._handle_safely(w, ev):
                        return
                    w.done = ev.position
            w.done = max(w.done, upto)

    async def _work_batched(self, w: _Worker, evs: list[RecordedEvent]) -> bool:
        """Hand a chunk to the batched handler: runs of events with no history go as one
        Batch; an event in a suspect range (the previous owner died there) or with
        recorded attempts goes alone through the per-event path, which records attempts
        before running them, so crash accounting is the same as for plain handlers."""
        i, n = 0, len(evs)
        while i < n:
            ev = evs[i]
            if ev.position <= w.suspect_until or (w.attempts and ev.id in w.attempts):
                if not await self._handle_safely(w, ev):
                    return False
                w.done = ev.position
                i += 1
                continue
            if not w.attempts:
                j = n  # the common case: positions ascend past suspect_until, and no attempts
            else:
                j = i + 1
                while j < n and evs[j].position > w.suspect_until and not (w.attempts and evs[j].id in w.attempts):
                    j += 1
            if not await self._lease_ok(w):
                return False
            run = evs[i:j] if i or j < n else evs
            t0 = time.perf_counter()
            batch = Batch(Delivery.first_attempts(run, group=self.group, scope=self.scope, member=self.id,
                                                  tx=self._w.begin))
            outcomes = await attempt_batch(self.handler, batch, self.policy)  # type: ignore[arg-type]
            handler_time(self.scope, self.group, time.perf_counter() - t0)
            if outcomes.count(None) == len(outcomes):  # all acked: account for the run at once
                self.stats.handled += len(run)
                w.consumed += len(run)
                w.done = run[-1].position
                i = j
                continue
            for e, failure in zip(run, outcomes):
                if failure is None:
                    self.stats.handled += 1
                    w.consumed += 1
                elif not await self._retry_failed(w, e, failure):
                    return False
                w.done = e.position
            i = j
        return True

    async def _retry_failed(self, w: _Worker, ev: RecordedEvent, failure: Failure) -> bool:
        """An event that failed its first attempt inside a batch: record the attempt (as
        the per-event path does after a failure), wait the nack's delay or the backoff,
        then carry on one event at a time through _handle, which resumes from it."""
        self.stats.failed_attempts += 1
        now = now_us()
        att = Attempt(ev.id, ev.position, 1, now, now, failure.reason, failure.trace)
        while True:
            try:
                if self.policy.max_attempts <= 1:
                    return await self._dead_letter(w, ev, att)
                await self._gs.record_attempt(w.partition, self.id, att)
                break
            except SynclineError as e:
                log.warning("bus %s/%s p%d store error: %s", self.scope, self.group, w.partition, e.code)
                await asyncio.sleep(0.5)
                if w.stopping:
                    return False
        delay = failure.delay_s if failure.delay_s is not None else self.policy.delay_after(1)
        if delay > 0:
            await asyncio.sleep(delay)
        w.attempts[ev.id] = att
        return await self._handle_safely(w, ev)

    @property
    def _ahead(self) -> int:
        """How far past what is queued a mark reaches: ``mark_ahead`` positions, or two
        pages if pages span more (a member reading only its partitions' rows gets pages
        that cover several times ``batch`` positions of the log)."""
        return max(self.mark_ahead, 2 * self._span)

    async def _mark(self, w: _Worker, need: int, *, retry: bool = True) -> bool:
        """Make the partition's durable in-flight mark cover ``need`` before its events reach
        the handler. One write covers every worker of this member that needs one, and
        marks ``mark_ahead`` positions past what each has queued: a mark only has to be
        at or above what the handler gets (a higher one just widens the range a new
        owner handles carefully after a crash), so under load one write serves many
        pages instead of one."""
        while True:
            try:
                async with self._mark_lock:
                    if w.marked >= need:
                        return True
                    ahead = self._ahead
                    todo = [(x, x.dispatched + ahead) for x in self._workers.values()
                            if x.dispatched + ahead // 2 > x.marked and not x.stopping]
                    await self._gs.mark_inflight(self.id, [(x.partition, x.epoch, upto) for x, upto in todo])
                    for x, upto in todo:
                        x.marked = max(x.marked, upto)
                    return True
            except SynclineError as e:
                if not retry:
                    raise
                log.warning("bus %s/%s p%d in-flight mark failed: %s", self.scope, self.group, w.partition, e.code)
                await asyncio.sleep(0.5)
                if w.stopping:
                    return False

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
        gone (False).

        With ``persist``, every attempt that might crash the process unnoticed is recorded
        before it runs: retries (the event already failed once) and anything in a range the
        previous owner died handling. An event in such a range starts at attempt 2: the
        previous owner may have delivered it, and if it was what killed that process this
        is its second try (RabbitMQ counts a delivery the same way for every message a
        dead consumer held)."""
        n = prior.attempts if prior else 0
        first = prior.first_failure_us if prior else 0
        suspect = persist and ev.position <= w.suspect_until
        if suspect and prior is None:
            n = 1
        while True:
            if not await self._lease_ok(w):
                return False
            n += 1
            if persist and (suspect or n > 1):
                # One recorded attempt in flight per process: a crash kills every handler
                # running in it, and only the one that holds this lock is charged for it.
                async with recorded_attempt_lock() if self.handler_in_process else contextlib.nullcontext():
                    if w.stopping:
                        return False
                    now = now_us()
                    await self._gs.begin_attempt(w.partition, self.id, Attempt(
                        ev.id, ev.position, n, first or now, now,
                        f"{CRASH_REASON} while handling the event (attempt {n}, member {self.id})", ""))
                    t0 = time.perf_counter()
                    failure = await attempt(self._single, self._delivery(ev, n, dead_letter_id), self.policy)
                    handler_time(self.scope, self.group, time.perf_counter() - t0)
                    if failure is None:
                        await self._gs.clear_attempt(ev.id)
            else:
                t0 = time.perf_counter()
                failure = await attempt(self._single, self._delivery(ev, n, dead_letter_id), self.policy)
                handler_time(self.scope, self.group, time.perf_counter() - t0)
            if failure is None:
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
            if prior.crashed:  # the last allowed attempt killed its worker: no more
                return await self._dead_letter(w, ev, prior)
            # (max_attempts was lowered since): one more try
            prior = Attempt(prior.event_id, prior.position, self.policy.max_attempts - 1, prior.first_failure_us,
                            prior.last_failure_us, prior.reason, prior.trace)
        out = await self._run_attempts(w, ev, prior, None, persist=True)
        if out is False:
            return False
        if out is None:
            self.stats.handled += 1
            w.consumed += 1
            return True
        return await self._dead_letter(w, ev, out)

    async def _dead_letter(self, w: _Worker, ev: RecordedEvent, att: Attempt) -> bool:
        await self.dlq.dead_letter(scope=self.scope, group=self.group, partition=w.partition, event=ev,
                                   attempt=att, member=self.id)
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
                await self._guarded(self._flush())
            except SynclineError as e:
                log.warning("bus %s/%s checkpoint failed: %s", self.scope, self.group, e.code)

    async def _flush(self) -> None:
        dirty = [(w, w.done, w.consumed) for w in list(self._workers.values()) if w.done > w.committed]
        if not dirty:
            return
        for w, _, n in dirty:
            w.consumed -= n
        try:
            await self._gs.commit(self.id, [(w.partition, w.epoch, done, n) for w, done, n in dirty])
        except BaseException:
            for w, _, n in dirty:
                w.consumed += n
            raise
        for w, done, _ in dirty:
            w.committed = max(w.committed, done)
