"""Tracing end to end (docs/observability.md#tracing): a W3C ``traceparent`` given on REST,
on the native ``hello`` or on one native message is the parent of the server's spans,
is stored in the ``meta`` of the events written, and the delivery of those events to
another connection (and in a poll response) is a span of the same trace."""
from __future__ import annotations

import time

import httpx
from api_wsclient import NativeClient
from waiting import until

from syncline.engine import protocol as P
from syncline.engine.clocks import HLCTimestamp

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"


def traceparent(trace_id: str, span_id: str = "00f067aa0ba902b7") -> str:
    return f"00-{trace_id}-{span_id}-01"


def trace_of(tp: str) -> str:
    return tp.split("-")[1]


def spans_of(exporter, trace_id: str) -> list:
    return [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]


def names(spans) -> set[str]:
    return {s.name for s in spans}


def _op(op_id: str, client: str, title: str) -> dict:
    hlc = HLCTimestamp(int(time.time() * 1000), 0, client).encode()
    return {"kind": "op", "op": op_id, "client": client, "user": "alice", "stream": "rec/notes/n1",
            "vc": {client: 1}, "hlc": hlc, "set": {"title": title}, "delete": [], "base": 0}


async def test_rest_append_to_delivery_on_another_connection_is_one_trace(gateway, spans):
    srv = gateway()
    reader = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    await reader.expect(P.WELCOME)
    await reader.send(P.SUB, id="s1", streams=["notes/1"], after=0)

    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers()) as c:
        r = await c.post("/v1/streams/notes/1", json={"events": [{"type": "note.added", "data": {"n": 1}}]},
                         headers={"traceparent": traceparent(TRACE_A)})
        assert r.status_code == 201, r.text

        page = await reader.expect(P.EVENTS)
        [event] = page["events"]
        # The delivered event carries the writer's trace in its meta (the wire encodes meta).
        assert trace_of(event["meta"]["traceparent"]) == TRACE_A
        # So does a poll response, for a client on the polling fallback.
        polled = (await c.get("/v1/events/poll", params={"after": 0})).json()["events"]
        assert [trace_of(e["meta"]["traceparent"]) for e in polled] == [TRACE_A]

    await until(lambda: {"ws.deliver", "poll.deliver"} <= names(spans_of(spans, TRACE_A)), 5,
                "the delivery spans")
    traced = spans_of(spans, TRACE_A)
    by_id = {s.context.span_id: s for s in traced}
    request = next(s for s in traced if s.name.startswith("HTTP POST"))
    assert request.parent.span_id == 0x00f067aa0ba902b7  # the client's span is the parent
    assert "store.group_commit" in names(traced)
    deliver = next(s for s in traced if s.name == "ws.deliver")
    # The delivery's parent is the span that wrote the event (the request's), found by the
    # traceparent stored in the event: one trace from the REST call to the other socket.
    assert f"{deliver.parent.span_id:016x}" == event["meta"]["traceparent"].split("-")[2]
    assert deliver.parent.span_id in by_id
    await reader.close()


async def test_hello_traceparent_is_the_default_and_a_message_one_overrides(gateway, spans):
    srv = gateway()
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.HELLO, client="c1", traceparent=traceparent(TRACE_A))
    await cl.send(P.OPS, id="b1", ops=[_op("op-1", "c1", "from hello")])  # no traceparent of its own
    assert (await cl.expect(P.OPACKS))["results"][0]["kind"] == "applied"
    await cl.send(P.OPS, id="b2", ops=[_op("op-2", "c1", "own")], traceparent=traceparent(TRACE_B))
    assert (await cl.expect(P.OPACKS))["results"][0]["kind"] in ("applied", "merged")
    await cl.send(P.OPS, id="b3", ops=[_op("op-3", "c1", "bad")], traceparent="00-not-a-trace")
    assert (await cl.expect(P.OPACKS))["results"][0]["kind"] in ("applied", "merged")

    events = httpx.get(f"{srv.url}/v1/streams/rec/notes/n1", headers=srv.headers()).json()["events"]
    traces = [trace_of(e["meta"]["traceparent"]) for e in events if e["type"] != "conflict.detected"]
    assert traces == [TRACE_A, TRACE_B, TRACE_A]  # the invalid one is ignored: the hello's applies
    assert {"ws.hello", "ws.ops", "records.reconcile", "store.group_commit"} <= names(spans_of(spans, TRACE_A))
    assert {"ws.ops", "records.reconcile"} <= names(spans_of(spans, TRACE_B))
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'syncline_traceparent_invalid_total{path="ws_message"} 1.0' in metrics
    await cl.close()


async def test_room_message_fan_out_is_in_the_senders_trace(gateway, spans):
    srv = gateway()
    a = await NativeClient.connect(srv.ws_url, srv.token(user="alice"))
    b = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    for c in (a, b):
        await c.expect(P.WELCOME)
        await c.send(P.JOIN, room="lobby")
        await c.expect(P.JOINED)
    await a.send(P.SAY, room="lobby", data={"text": "hi"}, id="m1", traceparent=traceparent(TRACE_B))
    msg = await b.expect(P.MSG, skip=("presence", "joined"))
    assert msg["data"] == {"text": "hi"}
    await until(lambda: "hub.fanout" in names(spans_of(spans, TRACE_B)), 5, "the fan-out span")
    events = httpx.get(f"{srv.url}/v1/streams/room/lobby", headers=srv.headers()).json()["events"]
    said = [e for e in events if e["type"] == "room.message"]
    assert [trace_of(e["meta"]["traceparent"]) for e in said] == [TRACE_B]
    for c in (a, b):
        await c.close()


async def test_untraced_traffic_records_no_span(gateway, spans):
    srv = gateway()
    r = httpx.post(f"{srv.url}/v1/streams/notes/2", json={"events": [{"type": "note.added"}]},
                   headers=srv.headers())
    assert r.status_code == 201
    event = httpx.get(f"{srv.url}/v1/streams/notes/2", headers=srv.headers()).json()["events"][0]
    assert "traceparent" not in event["meta"]  # no trace given: nothing stored, nothing sampled
    assert spans.get_finished_spans() == ()


def test_traceparent_parsing_follows_the_w3c_rules():
    from opentelemetry import trace

    from syncline.api.tracing import parse_traceparent

    ctx = parse_traceparent(traceparent(TRACE_A))
    sc = trace.get_current_span(ctx).get_span_context()
    assert f"{sc.trace_id:032x}" == TRACE_A and sc.is_remote and sc.trace_flags.sampled
    for bad in (None, 17, "", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", f"00-{TRACE_A}-" + "0" * 16 + "-01",
                f"ff-{TRACE_A}-00f067aa0ba902b7-01", f"00-{TRACE_A}-00f067aa0ba902b7-01-extra",
                f"00-{TRACE_A[:-1]}-00f067aa0ba902b7-01", "x" * 10_000, f"00_{TRACE_A}_00f067aa0ba902b7_01"):
        assert parse_traceparent(bad) is None, bad
    # A later version may carry more fields after the four it shares with version 00.
    assert parse_traceparent(f"01-{TRACE_A}-00f067aa0ba902b7-01-more") is not None
