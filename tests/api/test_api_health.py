"""Health, readiness, metrics, OpenAPI, correlation ids, and `syncline serve` itself."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from waiting import wait_for


def test_healthz_readyz_metrics(srv):
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ready"
        assert body["dependencies"]["store"]["state"] == "up"
        assert body["dependencies"]["redis"]["state"] == "disabled"
        r = c.get("/metrics")
        assert r.status_code == 200
        assert "syncline_http_requests_total" in r.text


def test_correlation_id_echoed_and_generated(srv):
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz", headers={"X-Correlation-ID": "abc-123"}).headers["x-correlation-id"] == "abc-123"
        assert len(c.get("/healthz").headers["x-correlation-id"]) == 32


def test_openapi_lists_v1_routes(srv):
    schema = httpx.get(f"{srv.url}/schema/openapi.json").json()
    paths = set(schema["paths"])
    for p in ("/v1/streams/{stream}", "/v1/log", "/v1/events/poll", "/api/events/poll", "/v1/commands/{type_}",
              "/v1/docs/{doc}", "/v1/rooms/{room}/presence", "/healthz", "/readyz"):
        assert p in paths, p


def test_unknown_route_is_json_with_code(srv):
    r = httpx.get(f"{srv.url}/v1/nope", headers=srv.headers())
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_readyz_degraded_when_redis_is_down(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once closed
    g = gateway(redis_url=f"redis://127.0.0.1:{dead}/0")
    body = wait_for(lambda: (b := httpx.get(f"{g.url}/readyz").json())["dependencies"]["redis"]["state"] == "down"
                    and b, 5, "readyz to report redis down")
    assert body["status"] == "degraded"
    assert body["dependencies"]["redis"]["state"] == "down"
    assert "fanout_in_process_only" in body["degradations"]
    # REST still works: the log is the truth
    r = httpx.post(f"{g.url}/v1/streams/feed/1", json={"events": [{"type": "note.added"}]}, headers=g.headers())
    assert r.status_code == 201


def test_syncline_serve_prints_url_and_answers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SYNCLINE_JWT_SECRET": "serve-test-secret-0123456789abcdef-0123"}
    exe = Path(sys.executable).with_name("syncline")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        rest = "".join(proc.stdout.readline() for _ in range(3))
        assert "syncline token --tenant acme --user alice" in rest
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 20, "syncline serve to answer /healthz", interval=0.1)
        assert (tmp_path / "var" / "syncline.db").exists()
        token = subprocess.run([str(exe), "token", "--tenant", "acme", "--user", "alice"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        r = httpx.get(f"http://127.0.0.1:{port}/v1/log", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(15)
