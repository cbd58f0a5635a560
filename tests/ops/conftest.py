"""Fixtures of the operations tests (tracing, metrics, logs, dashboards): real gateways on
real ports (tests/api/api_support.py), and one OpenTelemetry SDK provider for the process.

The global tracer provider can be set once per process, so it is set here once, with a
``ParentBased(ALWAYS_OFF)`` sampler: only traces a test starts itself (a sampled
``traceparent`` it sends) are recorded, and the rest of the suite records nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

from api_support import RunningGateway, base_settings  # noqa: E402

_EXPORTER = InMemorySpanExporter()


def _install() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


@pytest.fixture(scope="session")
def _span_exporter() -> InMemorySpanExporter:
    return _install()


@pytest.fixture
def spans(_span_exporter):
    """The in-memory exporter, emptied before and after the test."""
    _span_exporter.clear()
    yield _span_exporter
    _span_exporter.clear()


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
