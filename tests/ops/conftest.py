"""Fixtures of the operations tests (tracing, metrics, logs, dashboards): real gateways on
real ports (tests/api/api_support.py), and an OpenTelemetry SDK provider for the tests
that look at spans.

The provider is given to Syncline with ``use_tracer_provider`` for the test only (the
process-wide provider is left alone, so the rest of the suite runs as in production
without an SDK). Its sampler is ``ParentBased(ALWAYS_OFF)``: only traces a test starts
itself (a sampled ``traceparent`` it sends) are recorded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from syncline.api import tracing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402


@pytest.fixture
def spans():
    """An in-memory exporter behind an SDK provider Syncline uses for this test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    yield exporter
    tracing.use_tracer_provider(None)
    provider.shutdown()


@pytest.fixture
def gateway(tmp_path):
    started: list[RunningGateway] = []

    def factory(**overrides) -> RunningGateway:
        db = overrides.pop("database_url", f"sqlite+aiosqlite:///{tmp_path}/gw{len(started)}.db")
        g = RunningGateway(base_settings(db, **overrides)).start()
        started.append(g)
        return g

    yield factory
    for g in started:
        g.stop()
