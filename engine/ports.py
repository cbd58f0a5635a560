"""Ports: the contracts adapters in store/ implement (docs/design.md, "Layers").

The engine never calls them itself (it does no I/O); they live here so that
store/, api/, clientkit/ and simulations/ all agree on one shape. The gateway takes its
store as an :class:`EventStore`; tests/store/test_conformance.py checks that every
store adapter and its doorbell satisfy these protocols.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Sequence, runtime_checkable

from .events import AppendResult, NewEvent, RecordedEvent, StreamWrite
from .filters import EventFilter


@dataclass(frozen=True, slots=True)
class LogPage:
    events: tuple[RecordedEvent, ...]
    next_after: int  # pass as ``after`` to continue; covers skipped (filtered-out) events too
    head: int  # the store's last committed position when the page was read


@dataclass(frozen=True, slots=True)
class ChainBreak:
    tenant: str
    stream: str
    version: int
    position: int
    reason: str  # "hash_mismatch" | "missing_event" | "broken_link" | "head_mismatch" | "out_of_order"
    #              | "stream_row_missing" (events of a stream that has no streams row)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    streams_checked: int
    events_checked: int
    breaks: tuple[ChainBreak, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.breaks


@dataclass(frozen=True, slots=True)
class PruneReport:
    events_deleted: int
    streams_touched: int
    held_back_by_checkpoint: int = 0
    details: dict = field(default_factory=dict)


@runtime_checkable
class EventStore(Protocol):
    """The append-only log. Every call is scoped to one tenant, except where ``all_tenants``
    is passed explicitly (platform consumers, admin jobs)."""

    doorbell: Doorbell  # rung after every commit; tails and followers wait on it
    poll_interval_s: float  # how long a caught-up tail waits when the doorbell stays silent

    async def append(
        self,
        tenant: str,
        stream: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> AppendResult: ...

    async def append_many(
        self, tenant: str, writes: Sequence[StreamWrite], *, idempotency_key: str | None = None
    ) -> AppendResult: ...

    async def read_stream(
        self, tenant: str, stream: str, *, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]: ...

    async def read_log(
        self,
        tenant: str | None,
        *,
        after: int = 0,
        limit: int = 1000,
        filter: EventFilter | None = None,
        all_tenants: bool = False,
    ) -> LogPage: ...

    async def stream_version(self, tenant: str, stream: str) -> int: ...

    async def head_position(self) -> int: ...

    def tail(
        self,
        tenant: str | None,
        *,
        after: int = 0,
        filter: EventFilter | None = None,
        all_tenants: bool = False,
        batch: int = 500,
    ) -> AsyncIterator[LogPage]: ...

    async def verify(self, tenant: str | None = None, stream: str | None = None) -> VerifyReport: ...

    async def close(self) -> None: ...


@runtime_checkable
class Doorbell(Protocol):
    """"Tenant T committed up to position P". Subscribers never trust the content: they read
    the log from their own cursor. A lost ring only delays them until their poll timeout."""

    async def ring(self, tenant: str, position: int) -> None: ...

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until a ring for a position above ``after`` (any tenant) or the timeout.
        Returns True when rung."""
        ...

    async def close(self) -> None: ...
