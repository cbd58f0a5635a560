"""Issue 15, item 7: bad numbers and bodies.

Numbers past what the store's columns hold (2^63 positions, 2^31 versions on PostgreSQL),
JSON nested 1,000 deep and invalid UTF-8 used to give 500s with the database's words in
the body, and ``sub`` with ``after >= 2^63`` closed the socket with 1011 and the SQLite
error. Now: bounds in the API schema and the protocol (400 / ``invalid_message``, typed
codes), no database text in any answer, every error response declared in the OpenAPI
schema, 405 with ``Allow``. A schema-driven fuzz run (schemathesis, fixed seed,
deterministic) against the live gateway on SQLite and on PostgreSQL finds no server error
and no response that breaks the declared schema.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
from api_support import RunningGateway, base_settings, make_token  # noqa: E402
from api_wsclient import NativeClient  # noqa: E402

from syncline.engine import protocol as P  # noqa: E402

BIG = 2 ** 63
DB_WORDS = ("sqlite", "overflow", "int32", "asyncpg", "postgres", "sqlalchemy", "no such table", "integer")
ST = [sys.executable, "-m", "schemathesis.cli"]  # the `st` command of this interpreter's schemathesis
CHECKS = ",".join(["not_a_server_error", "response_schema_conformance", "status_code_conformance",
                   "content_type_conformance", "response_headers_conformance", "unsupported_method"])


def _start(db_url: str, **overrides) -> RunningGateway:
    g = RunningGateway(base_settings(db_url, **overrides))
    # (RunningGateway's socket has TCP_NODELAY: without it every keep-alive request waited
    # ~40 ms for a delayed ACK, and this file's fuzz runs took a minute instead of seconds.)
    assert g.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return g.start()


@pytest.fixture
def sqlite_gw(tmp_path):
    g = _start(f"sqlite+aiosqlite:///{tmp_path}/fuzz.db")
    yield g
    g.stop()


@pytest.fixture
def pg_gw(pg_clean_url):
    g = _start(pg_clean_url)
    yield g
    g.stop()


def _no_db_words(text: str) -> None:
    low = text.lower()
    assert not any(w in low for w in DB_WORDS), text


# (path, params) that reached the database with numbers it cannot hold
NUMBER_PROBES = [
    ("/v1/events/poll", {"after": BIG}), ("/api/events/poll", {"after": BIG}), ("/v1/log", {"after": BIG}),
    ("/v1/deltas", {"after": BIG}), ("/v1/sync/deltas", {"after": BIG, "prefix": "a/"}),
    ("/v1/snapshots", {"at": BIG, "prefix": "a/"}), ("/v1/snapshots", {"chunk": 2 ** 31, "prefix": "a/"}),
    ("/v1/streams/a/b", {"from_version": BIG}), ("/v1/streams/a/b", {"from_version": 2 ** 31}),
    ("/v1/feeds/users/u", {"before": BIG}), ("/v1/feeds/rooms/r", {"before": BIG}),
    ("/v1/rooms/r/history", {"before": BIG}), ("/v1/bus/dead-letters", {"offset": BIG}),
    ("/v1/docs/d", {"at": str(BIG)}), ("/v1/docs/d/snapshot", {"at": str(BIG)}),
    ("/v1/records/c/i", {"at": str(BIG)}), ("/v1/events/poll", {"after": 2 ** 64 + 5}),
]


def _probe_numbers_and_bodies(g: RunningGateway) -> None:
    with httpx.Client(base_url=g.url, headers=g.headers(roles=("admin",))) as c:
        for path, params in NUMBER_PROBES:
            r = c.get(path, params=params)
            assert r.status_code == 400, (path, params, r.status_code, r.text)
            assert r.json()["code"] == "invalid", r.text
            _no_db_words(r.text.replace("Expected `int`", ""))
        r = c.post("/v1/streams/a/b", json={"events": [{"type": "a.b"}], "expected_version": 2 ** 31})
        assert r.status_code == 400 and r.json()["code"] == "invalid", r.text
        # A cursor we did not issue, carrying a position past 2^63.
        from syncline.engine.filters import EventFilter
        from syncline.engine.syncdata import encode_cursor
        cur = encode_cursor(2 ** 64 - 1, EventFilter(stream_prefixes=("a/",)))
        r = c.get("/v1/sync/deltas", params={"prefix": "a/", "cursor": cur})
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", r.text
        # Bodies: nested 1,000 deep, nested past the limit, not UTF-8.
        for body in (b"[" * 1000 + b"]" * 1000,
                     b'{"events":[{"type":"a.b","data":' + b"[" * 100 + b"]" * 100 + b"}]}"):
            r = c.post("/v1/streams/a/b", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["code"] == "invalid_json", r.text
            assert r.json()["details"]["reason"] == "too_deep"
        r = c.post("/v1/ops", content=b'{"ops": "\xff\xfe"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["details"]["reason"] == "invalid_utf8", r.text
        ok = {"events": [{"type": "a.b", "data": json.loads("[" * 30 + "]" * 30)}]}
        assert c.post("/v1/streams/a/b", json=ok).status_code == 201
        # Text PostgreSQL cannot hold (NUL), or longer than its column: typed 400s, on both stores.
        for path, params in (("/v1/log", {"prefix": "a\x00"}), ("/v1/sync/deltas", {"prefix": "\x00"}),
                             ("/v1/log", {"type": "a.\x00"}), ("/v1/bus/dead-letters", {"group": "g\x00"}),
                             ("/v1/bus/dead-letters/%00", {})):
            r = c.get(path, params=params)
            assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
            _no_db_words(r.text)
        for ev_id in ("\x00", "x" * 37):
            r = c.post("/v1/streams/a/b", json={"events": [{"type": "a.b", "id": ev_id}]})
            assert r.status_code == 400, r.text
        # 405 says what is allowed.
        r = c.request("TRACE", "/v1/log")
        assert r.status_code == 405 and "GET" in r.headers["allow"], r.headers
    m = httpx.get(f"{g.url}/metrics").text
    assert 'syncline_bodies_refused_total{code="too_deep"} 2.0' in m
    assert 'syncline_bodies_refused_total{code="invalid_utf8"} 1.0' in m


async def _ws_probe(g: RunningGateway) -> None:
    for t, fields in ((P.SUB, {"id": "s", "after": BIG}), (P.ACK, {"sub": "s", "upto": BIG}),
                      (P.HELLO, {"resume": {"s": BIG}})):
        c = await NativeClient.connect(g.ws_url, g.token(roles=("admin",)))
        await c.expect(P.WELCOME)
        await c.send(t, **fields)
        code, seen = await c.closed(10)
        assert code == P.CLOSE_PROTOCOL_ERROR, (t, code, seen)
        assert seen and seen[-1]["t"] == P.ERROR and seen[-1]["code"] == "invalid_message", seen
        _no_db_words(json.dumps(seen))
    # A filter PostgreSQL cannot read: an error answer, the connection stays (not 1011).
    c = await NativeClient.connect(g.ws_url, g.token(roles=("admin",)))
    await c.expect(P.WELCOME)
    await c.send(P.SUB, id="s", prefixes=["a\x00"])
    err = await c.expect(P.ERROR)
    assert err["code"] == "invalid" and err["details"]["reason"] == "invalid_filter", err
    await c.send(P.PING, id=1)
    await c.expect(P.PONG)
    await c.close()


def test_bad_numbers_and_bodies_on_sqlite(sqlite_gw):
    _probe_numbers_and_bodies(sqlite_gw)
    asyncio.run(_ws_probe(sqlite_gw))


def test_bad_numbers_and_bodies_on_postgres(pg_gw):
    _probe_numbers_and_bodies(pg_gw)
    asyncio.run(_ws_probe(pg_gw))


def test_a_store_failure_answers_without_the_database_words(tmp_path):
    db = tmp_path / "broken.db"
    g = _start(f"sqlite+aiosqlite:///{db}")
    try:
        with httpx.Client(base_url=g.url, headers=g.headers(roles=("admin",))) as c:
            assert c.post("/v1/streams/a/b", json={"events": [{"type": "a.b"}]}).status_code == 201
            # Break the database under the running gateway (a real driver error, with its text).
            con = sqlite3.connect(db)
            con.execute("ALTER TABLE events RENAME TO events_gone")
            con.commit()
            con.close()
            r = c.get("/v1/log")
            assert r.status_code >= 500, r.text
            assert set(r.json()) == {"code", "message"}, r.text
            assert r.json()["code"] in ("store_unavailable", "internal"), r.text
            _no_db_words(r.text)
        m = httpx.get(f"{g.url}/metrics").text
        assert "syncline_errors_masked_total{code=" in m
    finally:
        g.stop()


def _fuzz(g: RunningGateway, tmp_path: Path) -> str:
    token = make_token(roles=("admin",), ttl_s=600)
    cmd = [*ST, "--no-color", "run", f"{g.url}/schema/openapi.json", "-H", f"Authorization: Bearer {token}",
           "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", "20",
           "--seed", "15", "--generation-deterministic", "--workers", "1", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    return out


def _check_run(out: str) -> None:
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 30, out[-3000:]  # every operation of the schema
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= 500, out[-3000:]


def test_schema_fuzz_sqlite(sqlite_gw, tmp_path):
    _check_run(_fuzz(sqlite_gw, tmp_path))


def test_schema_fuzz_postgres(pg_gw, tmp_path):
    _check_run(_fuzz(pg_gw, tmp_path))


def test_the_schema_declares_bounds_and_error_bodies(sqlite_gw):
    d = httpx.get(f"{sqlite_gw.url}/schema/openapi.json").json()

    def param(path, name, method="get"):
        return next(p for p in d["paths"][path][method]["parameters"] if p["name"] == name)["schema"]

    assert param("/v1/events/poll", "after")["maximum"] == 2 ** 63 - 1
    assert param("/api/events/poll", "after")["maximum"] == 2 ** 63 - 1
    assert param("/v1/streams/{stream}", "from_version")["maximum"] == 2 ** 31 - 1
    assert param("/v1/bus/dead-letters", "offset")["maximum"] == 2 ** 63 - 1
    for path, item in d["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete"):
                for status in ("400", "401", "403", "404", "500", "503"):
                    assert status in op["responses"], (method, path, status)
    error = d["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message"}


async def _store_last_resort(url: str) -> None:
    from syncline.engine.errors import InvalidValue
    from syncline.store import open_store

    store = await open_store(url)
    try:
        for call in (lambda: store.read_log("acme", after=BIG, limit=10),
                     lambda: store.read_stream("acme", "a/b", from_version=BIG),
                     lambda: store.read_stream("acme", "a/b", from_version=2 ** 31) if "postgresql" in url else
                     store.read_log("acme", after=2 ** 64, limit=10)):
            with pytest.raises(InvalidValue) as e:
                await call()
            assert e.value.http_status == 400 and e.value.code == "invalid_value"
            _no_db_words(e.value.message)
    finally:
        await store.close()


def test_the_store_maps_values_it_cannot_hold_to_a_typed_400_sqlite(tmp_path):
    """The last resort under the API's bounds: a number past a column is the caller's fault."""
    asyncio.run(_store_last_resort(f"sqlite+aiosqlite:///{tmp_path}/lr.db"))


def test_the_store_maps_values_it_cannot_hold_to_a_typed_400_postgres(pg_clean_url):
    asyncio.run(_store_last_resort(pg_clean_url))
