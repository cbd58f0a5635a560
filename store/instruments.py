"""What a store tells the running service: how long it took, and which trace wrote what.

A store knows nothing of Prometheus or of requests. The gateway hands it two plain
callables through :meth:`Instrumented.instrument`:

- ``observe(op, seconds)``: the latency of an ``append`` (a caller's whole wait,
  group commit included), a ``commit`` (one group-commit transaction) and a ``read``
  (one log or stream page); api/metrics.py turns them into histograms;
- ``trace_meta()``: the fields to add to the ``meta`` of the events being appended
  (the writer's W3C ``traceparent``, built in api/tracing.py), or None.

Without them (tests, the CLI, benchmarks) nothing is measured and nothing is added.

The group commit gets a span of its own (``store.group_commit``) when at least one of
its callers is inside a trace: it is the child of the first such caller's span and
links to the others, so every writer's trace shows the transaction it waited for.
The check is one context lookup per append; no span object is made otherwise.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from syncline.engine.events import StreamWrite

Observe = Callable[[str, float], None]
TraceMeta = Callable[[], Mapping[str, Any] | None]

_tracer: Any = trace.get_tracer("syncline.store")


def use_tracer_provider(provider: Any | None) -> None:
    """Make the store's spans with ``provider`` (None: the global one again). For an
    application, or a test, that must not replace the process-wide provider."""
    global _tracer
    _tracer = (provider.get_tracer("syncline.store") if provider is not None
               else trace.get_tracer("syncline.store"))


class Instrumented:
    """Mixin for the event stores: the two hooks, off by default."""

    _observe: Observe | None = None
    _trace_meta: TraceMeta | None = None

    def instrument(self, *, observe: Observe | None = None, trace_meta: TraceMeta | None = None) -> None:
        """Set (or, with None, remove) the latency observer and the trace-meta source."""
        self._observe = observe
        self._trace_meta = trace_meta

    def _stamped(self, writes: Sequence[StreamWrite]) -> Sequence[StreamWrite]:
        """``writes`` with the current trace's fields merged into each event's ``meta``
        (an event's own fields win: a relayed event keeps its original writer's trace)."""
        source = self._trace_meta
        extra = source() if source is not None else None
        if not extra:
            return writes
        return [StreamWrite(w.stream, tuple(dataclasses.replace(e, meta={**extra, **e.meta}) for e in w.events),
                            w.expected_version) for w in writes]


def caller_span() -> SpanContext | None:
    """The current span's context when the caller is inside a trace (else None)."""
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def commit_span(callers: Sequence[SpanContext | None], *, calls: int, events: int) -> Any:
    """A ``store.group_commit`` span for a batch whose callers are in ``callers`` (None:
    not traced); None when none of them is traced."""
    traced = [c for c in callers if c is not None]
    if not traced:
        return None
    parent = trace.set_span_in_context(NonRecordingSpan(traced[0]))
    return _tracer.start_as_current_span(
        "store.group_commit", context=parent, links=[Link(c) for c in traced[1:16]],
        attributes={"syncline.batch.calls": calls, "syncline.batch.events": events})


def reconcile_span(ops: int, tenant: str) -> Any:
    """A ``records.reconcile`` span when the caller is inside a trace, else None."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return _tracer.start_as_current_span("records.reconcile",
                                         attributes={"syncline.ops": ops, "syncline.tenant": tenant})
