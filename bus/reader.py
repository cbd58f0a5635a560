"""One log reader per process for every group member reading the same slice of the log.

Members of groups in one process that read the same store, tenant scope and filter
attach to one ``LogReader``: it reads and decodes each page once, splits it by
partition once per partition count, and hands every attached member the page to
dispatch to the partitions it owns. Before this, each member read and decoded every
event of its scope itself: 4 members meant 4 reads and 4 decodes of the whole log.

The reader reads from the lowest position any attached member still needs (the
lowest ``dispatched`` of their workers); a member that claims a partition behind
that asks for a ``reset`` and the reader rewinds (members skip what they already
dispatched). Members share the reader's backpressure: a member whose partition
queue is full holds the page until it has room, so a slow group slows the other
groups attached to the same reader (their queues still hold ``queue_max`` chunks
each before that happens).

Each read asks only for the partitions the attached members hold (the store keeps
every event's partition key, ``events.pkey``, migration 0006): a member in its own
process, holding 4 partitions of 16, reads a quarter of the log instead of all of it.
The page remembers which partitions it was read for (``PageSplit.owned``); a worker of
a partition claimed after the read was planned is not served by it (the claim resets
the reader, which reads again for the new set). Members of groups with different
partition counts sharing one reader read everything, as before.

Events are decoded once and shared by every attached member: handlers must treat
``event.data`` as read-only (it always was meant to be; now it matters).
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from syncline.engine.errors import SynclineError
from syncline.engine.events import RecordedEvent
from syncline.engine.filters import EventFilter
from syncline.engine.ports import LogPage

from .events import partition_of

if TYPE_CHECKING:
    from .member import GroupMember

log = logging.getLogger("syncline.bus")

# Per event loop (a reader is a task of one loop), then per (store, scope, filter).
_readers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, LogReader]]" = (
    weakref.WeakKeyDictionary()
)


def reader_for(member: "GroupMember") -> "LogReader":
    """The process's reader for the member's store, scope and filter (made on first use)."""
    readers = _readers.setdefault(asyncio.get_running_loop(), {})
    key = (id(member.store), member.scope, repr(member.filter), member.reader_group)
    r = readers.get(key)
    if r is None or r.store is not member.store:
        r = readers[key] = LogReader(readers, key, member.store, member.tenant, member.all_tenants, member.filter)
    return r


class PageSplit:
    """A page's events grouped by partition, computed once per (partition count, whether
    system streams are included) and shared by every member dispatching the page."""

    __slots__ = ("page", "selection", "_by")

    def __init__(self, page: LogPage, selection: tuple[int, frozenset[int]] | None = None) -> None:
        self.page = page
        self.selection = selection  # (partition count, partitions) the page was read for; None: all
        self._by: dict[tuple[int, bool], dict[int, list[RecordedEvent]]] = {}

    def by_partition(self, partitions: int, include_system: bool) -> dict[int, list[RecordedEvent]]:
        key = (partitions, include_system)
        out = self._by.get(key)
        if out is None:
            out = {}
            # A page holds many events of few streams: the partition once per stream.
            known: dict[tuple[str, str], int] = {}
            for ev in self.page.events:
                if not include_system and ev.stream[0] == "$":
                    continue
                k = (ev.tenant, ev.stream)
                p = known.get(k)
                if p is None:
                    p = known[k] = partition_of(ev, partitions)
                bucket = out.get(p)
                if bucket is None:
                    out[p] = [ev]
                else:
                    bucket.append(ev)
            self._by[key] = out
        return out

    def serves(self, partitions: int, partition: int) -> bool:
        """Whether this page holds every event of ``partition`` (of ``partitions``) in its range."""
        sel = self.selection
        return sel is None or (sel[0] == partitions and partition in sel[1])


class LogReader:
    def __init__(
        self, registry: dict, key: tuple, store: Any, tenant: str | None, all_tenants: bool,
        filter: EventFilter | None,
    ) -> None:
        self._registry = registry
        self._key = key
        self.store = store
        self.tenant = tenant
        self.all_tenants = all_tenants
        self.filter = filter
        self._members: list[GroupMember] = []
        self._task: asyncio.Task | None = None
        self._reset = True
        self._wake = asyncio.Event()
        self.pages = 0  # pages read (tests and benchmarks look)
        self.events_read = 0  # events those pages held
        self.selection: tuple[int, frozenset[int]] | None = None  # what the reads ask for

    def attach(self, member: "GroupMember") -> None:
        if member not in self._members:
            self._members.append(member)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus-reader-{member.scope}")
        self.reset()

    async def detach(self, member: "GroupMember") -> None:
        if member in self._members:
            self._members.remove(member)
        if not self._members:
            if self._registry.get(self._key) is self:
                del self._registry[self._key]
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
        else:
            self.reset()

    def reset(self) -> None:
        """Recompute the cursor from the members' workers before the next read."""
        self._reset = True
        self._wake.set()

    @property
    def batch(self) -> int:
        return max((m.batch for m in self._members), default=500)

    async def _run(self) -> None:
        cursor = 0
        while True:
            try:
                if self._reset:
                    self._reset = False
                    self._wake.clear()
                    starts = [s for s in (m.read_from() for m in self._members) if s is not None]
                    if not starts:
                        await self._idle(None)
                        self._reset = True
                        continue
                    cursor = min(starts)
                    self.selection = self._selection()
                sel = self.selection
                if sel is None:
                    page = await self.store.read_log(
                        None if self.all_tenants else self.tenant, after=cursor, limit=self.batch,
                        filter=self.filter, all_tenants=self.all_tenants,
                    )
                else:
                    page = await self.store.read_log(
                        None if self.all_tenants else self.tenant, after=cursor, limit=self.batch,
                        filter=self.filter, all_tenants=self.all_tenants, partitions=(sel[0], tuple(sorted(sel[1]))),
                    )
                self.pages += 1
                self.events_read += len(page.events)
                split = PageSplit(page, sel)
                for m in list(self._members):
                    await m.dispatch(split, cursor)
                cursor = page.next_after
                # Caught up with the head the page was read at: nothing more to read until
                # the doorbell rings past it (reading again at once would cost every member
                # one more empty round trip per commit under a steady trickle of appends).
                caught_up = not page.events or (page.head is not None and cursor >= page.head)
                if caught_up and not self._reset:
                    await self._idle(cursor)
            except asyncio.CancelledError:
                raise
            except SynclineError as e:
                log.warning("bus reader %s read failed: %s", self._key[1], e.code)
                await asyncio.sleep(0.5)
            except Exception:  # a bug must not silently stop every member attached here
                log.exception("bus reader %s failed; rewinding", self._key[1])
                self._reset = True
                await asyncio.sleep(0.5)

    def _selection(self) -> tuple[int, frozenset[int]] | None:
        """The partitions every attached member's workers hold, if the store can read by
        partition and they all count partitions alike; None: read everything."""
        if not getattr(self.store, "reads_partitions", False):
            return None
        counts = {m.partitions for m in self._members}
        if len(counts) != 1:
            return None
        [count] = counts
        held = frozenset(p for m in self._members for p in m.held_partitions())
        if count == 1 or len(held) >= count:
            return None
        return count, held

    async def _idle(self, cursor: int | None) -> None:
        """Wait for the log to grow past ``cursor`` (None: for a member to need events),
        for a reset, or for the poll interval, whichever comes first."""
        timeout = min([self.store.poll_interval_s] + [m.heartbeat_s for m in self._members])
        waits = [asyncio.ensure_future(self._wake.wait())]
        if cursor is not None:
            waits.append(asyncio.ensure_future(self.store.doorbell.wait(cursor, timeout)))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancel without awaiting them: awaiting here could swallow a cancellation of
            # this task (detach() would then wait forever for a reader that carries on).
            for w in waits:
                w.cancel()
