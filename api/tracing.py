"""Tracing with OpenTelemetry: W3C ``traceparent`` in, spans around the work, the trace
stored with every event it wrote (docs/observability.md#tracing).

Where a trace comes from: the ``traceparent`` header of a REST request or of a
WebSocket upgrade; the ``traceparent`` field of a native ``hello`` (the default for the
connection's later messages) or of any single native message (for that message). An
invalid value is ignored, as the W3C specification asks, and counted
(``syncline_traceparent_invalid_total``).

Where it goes: while a request or message is handled its span is the current one;
every event appended meanwhile gets ``meta.traceparent`` (the store asks
:func:`trace_meta`, store/instruments.py), so whoever reads the event later (a
WebSocket subscriber, a bus consumer, a poll response) sees the writer's trace, and
the gateway opens its delivery span as a child of it.

Cost: the OpenTelemetry API alone (no SDK provider installed) makes non-recording
spans, so the ids propagate but nothing is exported. The hot paths (each Yjs update,
each fan-out, each delivered page) make a span only when a trace is present (a parent
from the client or from the event's meta) or an SDK provider is installed, whose
sampler then decides (:func:`span`). Without either, a check costs one context lookup.

Exporting: set the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, or
``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``...). The
OTLP exporter package (``opentelemetry-exporter-otlp``) is optional: when it is absent
the server says so once in its log and keeps running without export.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .logging import log, service_name, service_version

TRACEPARENT = "traceparent"  # header, message field and meta key
_TRACEPARENT_RE = re.compile(r"\A([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?\Z")
_MAX_LEN = 512

_tracer: Any = trace.get_tracer("syncline.api")
_override: Any = None  # a provider given to use_tracer_provider()
_NULL = contextlib.nullcontext()
_recheck_at = 0.0
_sdk = False  # an SDK TracerProvider is installed (ours or the host's): sampling decides
_setup_done = False


def setup_tracing() -> None:
    """Install an SDK provider with the OTLP exporter when the ``OTEL_*`` variables ask for
    one and the exporter package is there; log once when it is not. Idempotent."""
    global _setup_done
    if _setup_done:
        return
    _setup_done = True
    if sdk_installed():
        return  # the host (a test, an embedding application) installed its own provider
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if wanted == "none" or (not wanted and not endpoint):
        return  # nothing asked for: ids propagate, nothing is exported
    if wanted not in ("", "otlp"):
        log.warning("tracing.exporter_unsupported", exporter=wanted, supported="otlp")
        return
    exporter = _otlp_exporter()
    if exporter is None:
        log.warning("tracing.exporter_absent", package="opentelemetry-exporter-otlp",
                    hint="pip install opentelemetry-exporter-otlp to export spans; tracing ids still propagate")
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name(),
                                                         "service.version": service_version()}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # (OTEL_BSP_* tune it)
    trace.set_tracer_provider(provider)
    log.info("tracing.exporting", exporter=type(exporter).__module__)


def use_tracer_provider(provider: Any | None) -> None:
    """Make Syncline's spans with ``provider`` instead of the process-wide one (None: back
    to the global provider). For an embedding application, or a test, that must not set
    the global provider (it can be set only once per process)."""
    global _tracer, _override
    from syncline.store.instruments import use_tracer_provider as store_uses

    _override = provider
    _tracer = provider.get_tracer("syncline.api") if provider is not None else trace.get_tracer("syncline.api")
    store_uses(provider)


def _otlp_exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    modules = (["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"] if protocol == "grpc" else
               ["opentelemetry.exporter.otlp.proto.http.trace_exporter"])
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.OTLPSpanExporter()  # (reads the OTEL_EXPORTER_OTLP_* variables)
    return None


def sdk_installed() -> bool:
    """Whether spans are recorded (an SDK provider is installed). Once true it stays true
    (the global provider can be set only once); while false it is looked up again at
    most once a second (the lookup reads the environment: too slow for every frame)."""
    global _sdk, _recheck_at
    if _sdk or _override is not None:
        return True
    now = time.monotonic()
    if now < _recheck_at:
        return False
    _recheck_at = now + 1.0
    _sdk = type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk")
    return _sdk


# -- traceparent ------------------------------------------------------------------


def parse_traceparent(value: Any) -> Context | None:
    """The context a W3C ``traceparent`` names, or None when it is absent or invalid
    (version ``ff``, all-zero ids, wrong shape)."""
    if not isinstance(value, str) or len(value) > _MAX_LEN:
        return None
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or (version == "00" and len(value.strip()) != 55):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if not tid or not sid:
        return None
    sc = SpanContext(tid, sid, is_remote=True, trace_flags=TraceFlags(int(flags, 16) & 0x01))
    return trace.set_span_in_context(NonRecordingSpan(sc))


def format_traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags) & 0xff:02x}"


def current_traceparent() -> str | None:
    sc = trace.get_current_span().get_span_context()
    return format_traceparent(sc) if sc.is_valid else None


def current_trace_id() -> str | None:
    sc = trace.get_current_span().get_span_context()
    return f"{sc.trace_id:032x}" if sc.is_valid else None


def trace_meta() -> Mapping[str, Any] | None:
    """What the store adds to the ``meta`` of the events it appends now: the current
    span's ``traceparent`` (store/instruments.py calls it once per append), or None."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    # With an SDK provider, an unsampled trace is one nobody will look at: its id is not
    # stored. Without one, the only valid contexts are the clients' own.
    if (_sdk or _override is not None) and not sc.trace_flags.sampled:
        return None
    return {TRACEPARENT: format_traceparent(sc)}


def event_parent(meta: Any) -> Context | None:
    """The writer's trace of a stored event (its ``meta.traceparent``), or None."""
    if not meta:
        return None
    value = meta.get(TRACEPARENT) if isinstance(meta, Mapping) else None
    return parse_traceparent(value) if value is not None else None


def trace_active() -> bool:
    return trace.get_current_span().get_span_context().is_valid


# -- spans --------------------------------------------------------------------------


def span(name: str, *, parent: Context | None = None, attributes: Mapping[str, Any] | None = None,
         kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> Any:
    """A context manager: a span named ``name`` made current, child of ``parent`` (or of
    the current span). No span at all (a shared null context) when there is no parent,
    no current trace and no SDK provider: the hot paths cost one context lookup then."""
    if parent is None and not sdk_installed() and not trace_active():
        return _NULL
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def traced(parent: Context | None, name: str, attributes: Mapping[str, Any] | None = None,
           kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> Any:
    """A span child of ``parent`` only when there is one (or an SDK provider samples):
    for per-message and per-delivery spans that must cost nothing otherwise."""
    if parent is None and not sdk_installed():
        return _NULL
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


DELIVERY_SPANS_MAX = 8  # distinct writer traces given a delivery span per page (the rest: none)


def delivery_spans(events: Any, name: str, attributes: Mapping[str, Any] | None = None) -> list[Any]:
    """Started (not current) spans, one per distinct writer trace among ``events`` (their
    ``meta.traceparent``), each a child of the writer's span: the delivery of a write, in
    the writer's trace. The caller ends them once the page is handed to the socket.
    Empty, and no span made, when no event carries a trace."""
    seen: set[str] = set()
    spans: list[Any] = []
    for e in events:
        meta = e.meta
        if not meta:
            continue
        value = meta.get(TRACEPARENT)
        if value is None or value in seen:
            continue
        seen.add(value)
        parent = parse_traceparent(value)
        if parent is None:
            continue
        spans.append(_tracer.start_span(name, context=parent, kind=trace.SpanKind.PRODUCER,
                                        attributes={**(attributes or {}), "syncline.position": e.position}))
        if len(spans) >= DELIVERY_SPANS_MAX:
            break
    return spans


_EMPTY = Context()


def detach_trace() -> None:
    """Leave the current trace for the rest of this task (a task spawned inside a traced
    message inherits its context; work it does later belongs to no trace)."""
    from opentelemetry import context

    context.attach(_EMPTY)
