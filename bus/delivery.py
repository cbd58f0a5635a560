"""What a handler receives, and how one delivery attempt is run: ack, nack, timeout."""
from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from syncline.engine.events import RecordedEvent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` deliveries per event, then the dead-letter queue.

    ``ack_timeout_s``: a handler that neither returns nor acks in time is cancelled and
    the attempt counts as failed. With ``auto_ack`` (the default) returning normally
    acks; without it the handler must call ``delivery.ack()`` (it may do so from
    another task, within the timeout). Between attempts the member waits the nack's
    ``delay_s`` if given, else ``retry_delay_s * backoff ** (attempt - 1)`` (capped).
    """

    max_attempts: int = 3
    ack_timeout_s: float | None = 30.0
    auto_ack: bool = True
    retry_delay_s: float = 0.05
    backoff: float = 2.0
    retry_delay_max_s: float = 5.0

    def delay_after(self, attempt: int) -> float:
        return min(self.retry_delay_s * self.backoff ** (attempt - 1), self.retry_delay_max_s)


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    trace: str
    delay_s: float | None = None


class Delivery:
    """One delivery of one event to one handler. ``attempt`` is 1-based; a redelivery
    from the dead-letter queue carries the original event id (and the edited payload,
    if the entry was edited) and sets ``dead_letter_id``."""

    __slots__ = ("event", "group", "scope", "member", "attempt", "dead_letter_id", "outcome", "duplicate",
                 "_tx", "_settled")

    def __init__(
        self, event: RecordedEvent, *, group: str, scope: str, member: str, attempt: int,
        dead_letter_id: str | None = None, tx: Callable[[], Any] | None = None,
    ) -> None:
        self.event = event
        self.group = group
        self.scope = scope
        self.member = member
        self.attempt = attempt
        self.dead_letter_id = dead_letter_id
        self.outcome: tuple | None = None  # ("ack",) or ("nack", reason, delay_s, trace)
        self.duplicate = False  # set by the idempotent helper when the event was already processed
        self._tx = tx
        self._settled: asyncio.Future | None = None

    @classmethod
    def first_attempts(
        cls, events: list[RecordedEvent], *, group: str, scope: str, member: str, tx: Callable[[], Any] | None,
    ) -> list["Delivery"]:
        """First deliveries of a run of events (a batch), built with plain slot stores:
        the keyword call of ``__init__`` per event was a third of a batched member's
        per-event cost in a drain (benchmarks/bus.py). Same fields as ``__init__``."""
        out = []
        append = out.append
        new = object.__new__
        for ev in events:
            d = new(cls)
            d.event = ev
            d.group = group
            d.scope = scope
            d.member = member
            d.attempt = 1
            d.dead_letter_id = None
            d.outcome = None
            d.duplicate = False
            d._tx = tx
            d._settled = None
            append(d)
        return out

    @property
    def redelivered(self) -> bool:
        return self.attempt > 1 or self.dead_letter_id is not None

    def ack(self) -> None:
        self._settle(("ack",))

    def nack(self, reason: str = "nacked by handler", *, delay_s: float | None = None, trace: str = "") -> None:
        """A failed attempt. ``trace``: what the dead-letter entry shows as the failure's
        trace (a remote consumer's stack trace; a local handler's exception has its own)."""
        self._settle(("nack", reason, delay_s, trace))

    def _settle(self, outcome: tuple) -> None:
        if self.outcome is None:
            self.outcome = outcome
            if self._settled is not None and not self._settled.done():
                self._settled.set_result(outcome)

    def transaction(self):
        """``async with delivery.transaction() as conn``: a transaction on the store's
        database, for handlers that write their own rows (see bus/idempotent.py)."""
        if self._tx is None:
            raise RuntimeError("this delivery has no database (broadcast subscriptions on memory://)")
        return self._tx()

    async def _wait_settled(self, timeout: float | None) -> None:
        if self.outcome is not None:
            return
        self._settled = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._settled, timeout)


Handler = Callable[[Delivery], Awaitable[Any]]


async def attempt(handler: Handler, d: Delivery, policy: RetryPolicy) -> Failure | None:
    """Run one attempt; None if acked, else why it failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.ack_timeout_s if policy.ack_timeout_s else None
    try:
        if deadline is None:
            await handler(d)
        else:
            async with asyncio.timeout_at(deadline):
                await handler(d)
        if d.outcome is None and not policy.auto_ack:
            await d._wait_settled(None if deadline is None else max(0.0, deadline - loop.time()))
    except TimeoutError:
        if d.outcome is None and (deadline is not None and loop.time() >= deadline):
            return Failure(f"ack timeout after {policy.ack_timeout_s}s", "")
        if d.outcome is None:
            return Failure("TimeoutError raised by handler", traceback.format_exc())
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the handler failed: the attempt counts, the member carries on
        if d.outcome is not None and d.outcome[0] == "ack":
            return None
        return Failure(f"{type(e).__name__}: {e}"[:2000], traceback.format_exc())
    if d.outcome is not None and d.outcome[0] == "nack":
        return Failure(d.outcome[1], d.outcome[3] if len(d.outcome) > 3 else "", d.outcome[2])
    return None


class Batch:
    """Consecutive events of ONE partition, in log order, for a batched handler
    (``bus.group(name, handler, batched=True)`` calls ``await handler(batch)``).

    Each delivery is settled on its own (``batch.deliveries[i].ack()`` / ``.nack(...)``);
    what the handler leaves unsettled when it returns is acked with ``auto_ack`` (the
    default), and otherwise awaited until the ack timeout, which covers the whole batch.
    A handler that raises fails every delivery it left unsettled. Failed and nacked
    events are then retried one at a time (each as a batch of one) through the
    per-event path, which records attempts and dead-letters as for plain handlers,
    before the partition moves on."""

    __slots__ = ("deliveries",)

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries

    @property
    def events(self) -> list[RecordedEvent]:
        return [d.event for d in self.deliveries]

    def ack_all(self) -> None:
        for d in self.deliveries:
            d.ack()

    def __len__(self) -> int:
        return len(self.deliveries)

    def __iter__(self):
        return iter(self.deliveries)


BatchHandler = Callable[[Batch], Awaitable[Any]]


def one_by_one(handler: BatchHandler) -> Handler:
    """A batched handler seen as a plain one: each delivery as a batch of one."""
    async def single(d: Delivery) -> None:
        await handler(Batch([d]))

    return single


async def attempt_batch(handler: BatchHandler, batch: Batch, policy: RetryPolicy) -> list[Failure | None]:
    """Run one attempt of a whole batch; per delivery, None if acked, else why it failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.ack_timeout_s if policy.ack_timeout_s else None
    error: Failure | None = None
    try:
        if deadline is None:
            await handler(batch)
        else:
            async with asyncio.timeout_at(deadline):
                await handler(batch)
        if not policy.auto_ack:
            for d in batch.deliveries:
                if d.outcome is None:
                    await d._wait_settled(None if deadline is None else max(0.0, deadline - loop.time()))
    except TimeoutError:
        if deadline is not None and loop.time() >= deadline:
            error = Failure(f"ack timeout after {policy.ack_timeout_s}s (batch of {len(batch)})", "")
        else:
            error = Failure("TimeoutError raised by handler", traceback.format_exc())
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the handler failed: every delivery it left unsettled fails
        error = Failure(f"{type(e).__name__}: {e}"[:2000], traceback.format_exc())
    out: list[Failure | None] = []
    for d in batch.deliveries:
        o = d.outcome
        if o is None:
            out.append(error)  # None (acked by auto_ack) unless the handler failed
        elif o[0] == "nack":
            out.append(Failure(o[1], o[3] if len(o) > 3 else "", o[2]))
        else:
            out.append(None)
    return out
