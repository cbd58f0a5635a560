"""A bus consumer sees the writer's trace: events appended inside a span carry
``meta.traceparent`` (store/instruments.py asks api/tracing.py), and a consumer's
handler can continue that trace from the delivered event (real SQLite store, real bus)."""
from __future__ import annotations

from waiting import until

from syncline.api import tracing
from syncline.bus import Bus
from syncline.engine.events import NewEvent
from syncline.store import open_store

TRACE = "0af7651916cd43dd8448eb211c80319c"


async def test_bus_consumer_receives_the_writers_trace(sqlite_url, spans):
    store = await open_store(sqlite_url, poll_interval_s=0.1)
    store.instrument(trace_meta=tracing.trace_meta)
    got = []

    async def handler(d) -> None:
        with tracing.span("consumer.handle", parent=tracing.event_parent(d.event.meta)):
            got.append(d.event)

    member = Bus(store).group("billing", handler, tenant="acme", partitions=1)
    await member.start()
    try:
        with tracing.span("client.write", parent=tracing.parse_traceparent(f"00-{TRACE}-00f067aa0ba902b7-01")):
            await store.append("acme", "invoice/1", [NewEvent("invoice.issued", {"n": 1})])
        await store.append("acme", "invoice/2", [NewEvent("invoice.issued", {"n": 2})])  # outside any trace
        await until(lambda: len(got) == 2, 10, "both deliveries")
    finally:
        await member.stop()
        await store.close()
    traced, plain = sorted(got, key=lambda e: e.stream)
    assert traced.meta["traceparent"].split("-")[1] == TRACE
    assert "traceparent" not in plain.meta
    handled = [s for s in spans.get_finished_spans() if s.name == "consumer.handle"]
    assert [f"{s.context.trace_id:032x}" for s in handled] == [TRACE]  # the untraced one made none
    write = next(s for s in spans.get_finished_spans() if s.name == "client.write")
    assert handled[0].parent.span_id == write.context.span_id
