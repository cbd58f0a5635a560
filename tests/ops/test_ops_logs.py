"""One log format (docs/observability.md#logs): a real ``syncline serve`` subprocess; every
line it writes to stderr (ours, alembic's migrations, uvicorn's access and error lines, the
prune job) is a JSON object with ``service`` and ``version``; request lines carry tenant,
user, route and trace id; refused logins (REST, WebSocket upgrade, in-band ``auth``)
carry the peer's address and user agent, and never the token."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import websockets
from api_support import SECRET, make_token
from api_wsclient import NativeClient
from services_support import free_port
from waiting import wait_for

from syncline.engine import protocol as P

AGENT = "ops-log-test/1.0"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_every_stderr_line_is_json_with_service_and_version(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCLINE_", "OTEL_"))}
    env.update({"SYNCLINE_JWT_SECRET": SECRET, "SYNCLINE_LOG_LEVEL": "info", "SYNCLINE_PRUNE_INTERVAL_S": "0.2",
                "PYTHONUNBUFFERED": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    err_path, out_path = tmp_path / "stderr.log", tmp_path / "stdout.log"
    cmd = [sys.executable, "-m", "syncline.cli", "serve", "--port", str(port),
           "--db", f"sqlite+aiosqlite:///{tmp_path}/events.db"]
    with open(err_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    url, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    good = make_token(user="alice")
    bad = make_token(user="mallory", secret="another-secret-0123456789abcdef0123")
    expired = make_token(user="old", ttl_s=-3600)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(err_path.read_text()[-3000:])
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "syncline serve", interval=0.05)
        with httpx.Client(base_url=url, headers={"user-agent": AGENT}) as c:
            r = c.get("/v1/streams/notes/1", headers={"Authorization": f"Bearer {good}",
                                                      "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
            assert r.status_code == 200, r.text
            assert c.get("/v1/streams/notes/1", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
            assert c.get("/v1/streams/notes/1", headers={"Authorization": f"Bearer {expired}"}).status_code == 401

        async def ws_refusals() -> None:
            refused = await NativeClient.connect(ws, bad, headers={"user-agent": AGENT})
            code, _ = await refused.closed()
            assert code == P.CLOSE_UNAUTHENTICATED
            cl = await NativeClient.connect(ws, good, headers={"user-agent": AGENT})
            await cl.expect(P.WELCOME)
            await cl.send(P.HELLO, client="c1")
            await cl.send(P.AUTH, token=expired, id="r1")  # an in-band refresh with a dead token
            assert (await cl.expect(P.ERROR))["code"] == "token_expired"
            await cl.close()
            try:  # a Yjs client with a bad token
                async with websockets.connect(f"{ws}/v1/yjs/pad?token={bad}", ping_interval=None,
                                              user_agent_header=AGENT) as y:
                    await y.recv()
            except websockets.ConnectionClosed:
                pass

        asyncio.run(ws_refusals())
        wait_for(lambda: any('"prune.finished"' in line for line in _lines(err_path)), 20, "the prune job's line")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    lines = _lines(err_path)
    records = []
    for line in lines:
        record = json.loads(line)  # every line: one JSON object
        assert record.get("service") == "syncline" and record.get("version"), line
        assert "level" in record and "timestamp" in record and "event" in record, line
        records.append(record)
    text = err_path.read_text()
    for token in (good, bad, expired):
        assert token not in text  # never the token
        assert token.split(".")[2] not in text

    loggers = {r.get("logger", "") for r in records}
    assert any(name.startswith("alembic") for name in loggers), loggers  # the migrations
    assert "uvicorn.error" in loggers and "uvicorn.access" in loggers, loggers
    assert "syncline.store.maintenance" in loggers, loggers  # the prune job
    prune = next(r for r in records if r["event"] == "prune.finished")
    assert isinstance(prune["events_deleted"], int)

    request = next(r for r in records if r["event"] == "http.request" and r.get("status") == 200
                   and r.get("route") == "/v1/streams/{stream}")
    assert (request["tenant"], request["user"], request["trace_id"]) == ("acme", "alice", TRACE)

    refused = [r for r in records if r["event"] == "auth.refused"]
    seen = {(r["endpoint"], r["code"], r["stage"]) for r in refused}
    assert {("rest", "token_bad_signature", "handshake"), ("rest", "token_expired", "handshake"),
            ("native", "token_bad_signature", "handshake"), ("native", "token_expired", "in_band"),
            ("yjs", "token_bad_signature", "handshake")} <= seen, seen
    for r in refused:
        assert r["peer"].startswith("127.0.0.1:") and r["user_agent"] == AGENT, r
    # The OTLP exporter package is not installed: said once, and the server ran on.
    assert sum(r["event"] == "tracing.exporter_absent" for r in records) == 1
