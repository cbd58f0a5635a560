"""REST semantics: optimistic concurrency, idempotency, paging and filters, polling,
critical commands with signed webhooks, snapshots and deltas."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
from waiting import wait_for

from syncline.engine.syncdata import Chunk, assemble_snapshot


def client(srv, **tok) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers=srv.headers(**tok))


def test_append_expected_version_and_idempotency(srv):
    with client(srv) as c:
        ev = {"events": [{"type": "cart.noted", "data": {"n": 1}}], "expected_version": 0}
        r = c.post("/v1/streams/cart/1", json=ev, headers={"Idempotency-Key": "abc"})
        assert r.status_code == 201 and r.json()["last_version"] == 1 and not r.json()["duplicate"]
        again = c.post("/v1/streams/cart/1", json=ev, headers={"Idempotency-Key": "abc"})
        assert again.status_code == 201 and again.json()["duplicate"] is True
        assert again.json()["event_ids"] == r.json()["event_ids"]
        conflict = c.post("/v1/streams/cart/1", json=ev)
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "version_conflict" and conflict.json()["details"]["actual"] == 1
        assert len(c.get("/v1/streams/cart/1").json()["events"]) == 1


def test_bad_input_is_json_with_code(srv):
    with client(srv) as c:
        cases = [
            (c.post("/v1/streams/Bad Stream", json={"events": [{"type": "a.b"}]}), 400, None),
            (c.post("/v1/streams/s/1", json={"events": [{"type": "nodots"}]}), 400, "invalid_event_type"),
            (c.post("/v1/streams/s/1", json={"events": []}), 400, "invalid"),
            (c.post("/v1/streams/s/1", content=b"{not json", headers={"content-type": "application/json"}), 400,
             None),
            (c.post("/v1/streams/$audit", json={"events": [{"type": "a.b"}]}), 403, "forbidden"),
            (c.post("/v1/streams/s/1", json={"events": [{"type": "payment.captured"}]}), 403,
             "critical_requires_command"),
            (c.get("/v1/log", params={"limit": 0}), 400, "invalid"),
            (c.get("/v1/docs/d1", params={"at": "yesterday"}), 400, "invalid"),
            (c.post("/v1/commands/order.placed", json={}), 400, "idempotency_key_required"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, r.text
            body = r.json()
            assert isinstance(body.get("code"), str) and body["code"]
            if code:
                assert body["code"] == code, body
        big = {"events": [{"type": "a.b", "data": "x" * (srv.settings.max_payload + 10)}]}
        r = c.post("/v1/streams/s/1", json=big)
        assert r.status_code == 413 and r.json()["code"] in ("payload_too_large", "http_error")


def test_log_paging_filters_and_poll(srv):
    with client(srv) as c:
        for i in range(12):
            stream = "feed/a" if i % 2 == 0 else "chat/b"
            c.post(f"/v1/streams/{stream}", json={"events": [{"type": f"{stream.split('/')[0]}.item",
                                                              "data": {"i": i}}]})
        got, after = [], 0
        while True:
            page = c.get("/v1/log", params={"after": after, "limit": 4, "prefix": "feed/"}).json()
            got += [e["data"]["i"] for e in page["events"]]
            after = page["next_after"]
            if not page["more"]:
                break
        assert got == [0, 2, 4, 6, 8, 10]
        typed = c.get("/v1/log", params={"type": "chat.*"}).json()["events"]
        assert [e["data"]["i"] for e in typed] == [1, 3, 5, 7, 9, 11]
        for path in ("/v1/events/poll", "/api/events/poll"):
            p = c.get(path, params={"after": 0, "limit": 5}).json()
            assert len(p["events"]) == 5 and p["more"] is True
            assert p["poll_interval_s"] == 30.0  # a backlog: poll again soon
            rest = c.get(path, params={"after": p["next"], "limit": 100}).json()
            assert len(rest["events"]) == 7 and rest["more"] is False
            assert 30.0 <= rest["poll_interval_s"] <= 300.0
            idle = c.get(path, params={"after": rest["next"]}).json()
            assert idle["events"] == [] and idle["poll_interval_s"] == 300.0  # quiet: back off


def test_deltas_and_state_snapshot_in_chunks(gateway):
    srv = gateway(snapshot_chunk_bytes=64)
    with client(srv) as c:
        for i in range(5):
            c.post("/v1/streams/feed/a", json={"events": [{"type": "feed.item", "data": {"i": i, "pad": "x" * 40}}]})
        d = c.get("/v1/sync/deltas", params={"prefix": "feed/", "after": 2}).json()
        assert [e["data"]["i"] for e in d["events"]] == [2, 3, 4] and d["done"] is True
        d2 = c.get("/v1/sync/deltas", params={"prefix": "feed/", "cursor": d["cursor"]}).json()
        assert d2["events"] == []
        manifest = c.get("/v1/snapshots", params={"prefix": "feed/"}).json()
        assert manifest["total"] > 1 and manifest["position"] == 5
        chunks = []
        for i in range(manifest["total"]):
            r = c.get("/v1/snapshots", params={"prefix": "feed/", "at": manifest["position"], "chunk": i})
            assert r.status_code == 200
            chunks.append(Chunk(i, manifest["total"], manifest["checksum"], r.content))
        position, content, checksum = assemble_snapshot(chunks)
        assert position == 5 and checksum == manifest["checksum"]
        assert len(content["feed/a"]["events"]) == 5


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_critical_command_202_status_audit_and_signed_webhook(gateway):
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    srv = gateway(webhook_url=f"http://127.0.0.1:{hook.server_port}/hook", webhook_secret="whsec")
    try:
        with client(srv) as c:
            r = c.post("/v1/commands/payment.capture", json={"amount": 1250, "currency": "EUR"},
                       headers={"Idempotency-Key": "pay-1"})
            assert r.status_code == 202
            body = r.json()
            assert body["status_url"] == f"/v1/commands/{body['command_id']}" and r.headers["location"]
            again = c.post("/v1/commands/payment.capture", json={"amount": 1250, "currency": "EUR"},
                           headers={"Idempotency-Key": "pay-1"})
            assert again.status_code == 202 and again.json()["command_id"] == body["command_id"]
            assert again.json()["duplicate"] is True
            st = wait_for(lambda: (s := c.get(body["status_url"]).json())["webhook"] and s, 10,
                          "the signed webhook to be delivered")
            assert st["type"] == "payment.capture" and st["data"] == {"amount": 1250, "currency": "EUR"}
            assert st["webhook"]["delivered"] is True
            assert len(_Hook.received) == 1  # the duplicate did not fire it again
            headers, raw = _Hook.received[0]
            ts = headers["X-Syncline-Timestamp"]
            expected = "sha256=" + hmac.new(b"whsec", ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            assert headers["X-Syncline-Signature"] == expected
            assert json.loads(raw)["command_id"] == body["command_id"]
            audit = c.get("/v1/streams/$audit", headers=srv.headers(roles=["admin"])).json()["events"]
            assert [e["type"] for e in audit] == ["audit.command"]
            assert audit[0]["retention"] == "critical"
            events = c.get(f"/v1/streams/cmd/{body['command_id']}").json()["events"]
            assert events[0]["retention"] == "critical" and events[0]["position"] == audit[0]["position"] - 1
    finally:
        hook.shutdown()


def test_records_time_travel(srv):
    from syncline.engine.clocks import HLCTimestamp

    with client(srv) as c:
        def op(n, value):
            return {"kind": "op", "op": f"op-{n}", "client": "c1", "user": "alice", "stream": "rec/notes/7",
                    "vc": {"c1": n}, "hlc": HLCTimestamp(int(time.time() * 1000) + n, 0, "c1").encode(),
                    "set": {"title": value}, "delete": [], "base": n - 1}

        r = c.post("/v1/ops", json={"ops": [op(1, "first")]})
        assert r.status_code == 200 and r.json()["results"][0]["kind"] == "applied"
        first_pos = c.get("/v1/log").json()["head"]
        c.post("/v1/ops", json={"ops": [op(2, "second")]})
        assert c.get("/v1/records/notes/7").json()["values"] == {"title": "second"}
        past = c.get("/v1/records/notes/7", params={"at": str(first_pos)}).json()
        assert past["values"] == {"title": "first"}
