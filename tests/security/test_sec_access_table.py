"""Issue 15, items 1 and 9: who reads what, on every read path, as one table.

Rows are read routes and WebSocket message types; columns are the roles viewer,
member, admin, auditor and a scoped token (a member narrowed to
``read:doc/handbook*``, ``write:room/support``, ``read:dm/sam``). Each cell says what
the caller must get back:

- ``all``: system-stream events (``$audit``, ``$security``) and user events;
- ``user``: user events, never a ``$`` stream;
- ``sys``: system-stream events only (a selection naming them);
- ``scope``: only streams inside the scoped token's scopes;
- ``none``: an empty answer;
- ``ok``: allowed (the answer's content is not the point of the row);
- ``<status>:<code>`` / ``<code>``: refused with that HTTP status / WebSocket error code.

Every answer is also checked for other users' inboxes (``dm/alice``), which only
admins may read. The gateway is the real one on real sockets, on SQLite and on
PostgreSQL, seeded once per backend.
"""
from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pycrdt
import pytest
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import RunningGateway, base_settings, make_token  # noqa: E402
from api_wsclient import NativeClient  # noqa: E402

from syncline.engine import protocol as P  # noqa: E402
from syncline.engine.clocks import HLCTimestamp  # noqa: E402
from syncline.engine.syncdata import Chunk, assemble_snapshot  # noqa: E402
from syncline.engine.yprotocol import PermissionDenied, decode_message, encode_sync_update  # noqa: E402

TENANT = "acme"
SCOPES = ["read:doc/handbook*", "write:room/support", "read:dm/sam"]
ROLES = ("viewer", "member", "admin", "auditor", "scoped")
TOKENS: dict[str, dict[str, Any]] = {
    "viewer": {"user": "victor", "roles": ["viewer"]},
    "member": {"user": "mia", "roles": ["member"]},
    "admin": {"user": "bob", "roles": ["admin"]},
    "auditor": {"user": "audrey", "roles": ["auditor"]},
    "scoped": {"user": "sam", "roles": ["member"], "scopes": SCOPES},
}
SYS = "403:system_stream_forbidden"
OOS = "403:out_of_scope"
NO = "403:forbidden"


def token(role: str) -> str:
    return make_token(tenant=TENANT, **TOKENS[role])


def headers(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role)}"}


def in_scope(stream: str) -> bool:
    """The scoped token's scopes, written out independently of engine/access.py."""
    return stream.startswith("doc/handbook") or stream in ("room/support", "dm/sam")


def yjs_update(text: str) -> bytes:
    d = pycrdt.Doc()
    d.get("text", type=pycrdt.Text).insert(0, text)
    return d.get_update()


# ---------------------------------------------------------------------------- the world


class World:
    def __init__(self, g: RunningGateway) -> None:
        self.g = g
        self.http = httpx.Client(base_url=g.url, timeout=15)
        self.command_id = ""

    def marker(self) -> int:
        """A fresh event every role can read (room/support), so a subscription that has
        delivered it has delivered everything before it."""
        r = self.http.post("/v1/streams/room/support", json={"events": [{"type": "note.marker"}]},
                           headers=headers("admin"))
        assert r.status_code == 201, r.text
        return r.json()["last_position"]


async def _seed(w: World) -> None:
    c, admin = w.http, headers("admin")
    def doc(text: str) -> list[dict]:
        return [{"type": "crdt.update", "data": {"$b64": base64.b64encode(yjs_update(text)).decode()}}]

    for stream, events in [
        ("doc/handbook-intro", doc("hi")),
        ("doc/secret", doc("plan")),
        ("room/sales", [{"type": "note.added", "data": {"n": 1}}]),
        ("room/support", [{"type": "note.added", "data": {"n": 2}}]),
        ("notes/1", [{"type": "note.added", "data": {"n": 3}}]),
    ]:
        assert c.post(f"/v1/streams/{stream}", json={"events": events}, headers=admin).status_code == 201
    r = c.post("/v1/ops", headers=admin, json={"ops": [record_op("bob", "rec/tasks/1")]})
    assert r.status_code == 200 and r.json()["results"][0]["kind"] == "applied", r.text
    # $audit: a critical command; $security: a cross-tenant attempt
    r = c.post("/v1/commands/order.approve", json={"order": 1}, headers={**admin, "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    w.command_id = r.json()["command_id"]
    assert c.get("/v1/log", headers={**headers("member"), "X-Tenant": "other"}).status_code == 403
    # inboxes: dm/alice (nobody's here but admins may read it) and dm/sam
    bob = await NativeClient.connect(w.g.ws_url, token("admin"))
    await bob.expect(P.WELCOME)
    for to in ("alice", "sam"):
        await bob.send(P.DM, to=to, data={"hi": to}, id=f"dm-{to}")
        await bob.expect(P.SENT)
    await bob.close()
    audit = c.get("/v1/streams/$audit", headers=admin).json()["events"]
    security = c.get("/v1/streams/$security", headers=admin).json()["events"]
    assert audit and security


def _pg_database(pg_url: str) -> tuple[str, Any]:
    """A fresh PostgreSQL database for this module (and a function that drops it)."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    parts = urlsplit(pg_url)
    admin_dsn = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    name = f"t_access_{os.getpid()}_{uuid.uuid4().hex[:10]}"

    async def run(stmt: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=30)
        try:
            await conn.execute(stmt)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    return url, lambda: asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request, tmp_path_factory):
    drop = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('access')}/access.db"
    else:
        pg = os.environ.get("SYNCLINE_TEST_PG_URL", "").strip()
        if not pg:
            if os.environ.get("CI"):
                pytest.fail("CI: SYNCLINE_TEST_PG_URL is not set")
            pytest.skip("PostgreSQL is not configured (SYNCLINE_TEST_PG_URL)")
        url, drop = _pg_database(pg)
    g = RunningGateway(base_settings(url)).start()
    w = World(g)
    try:
        asyncio.run(_seed(w))
        yield w
    finally:
        w.http.close()
        g.stop()
        if drop is not None:
            drop()


def record_op(user: str, stream: str) -> dict:
    client = f"c{uuid.uuid4().hex[:8]}"
    return {"kind": "op", "op": f"op-{uuid.uuid4().hex}", "client": client, "user": user, "stream": stream,
            "vc": {client: 1}, "hlc": HLCTimestamp(int(time.time() * 1000), 0, client).encode(),
            "set": {"title": "x"}, "delete": [], "base": 0}


# ---------------------------------------------------------------------------- checking a cell


def check(role: str, expected: str, outcome: str | list[str]) -> None:
    """``outcome``: a refusal (``status:code`` or ``code``), or the streams returned."""
    if isinstance(outcome, str):
        assert outcome == expected, f"{role}: expected {expected}, got {outcome}"
        return
    streams = outcome
    assert ":" not in expected and expected in ("all", "user", "sys", "scope", "none", "ok"), \
        f"{role}: expected {expected}, got streams {sorted(set(streams))}"
    if role != "admin":
        assert not any(s.startswith("dm/") and s != f"dm/{TOKENS[role]['user']}" for s in streams), \
            f"{role} saw another user's inbox: {sorted(set(streams))}"
    system = [s for s in streams if s.startswith("$")]
    user = [s for s in streams if not s.startswith("$")]
    if expected == "all":
        assert system and user, f"{role}: expected system and user streams, got {sorted(set(streams))}"
    elif expected == "user":
        assert user and not system, f"{role}: expected user streams only, got {sorted(set(streams))}"
    elif expected == "sys":
        assert system and not user, f"{role}: expected system streams only, got {sorted(set(streams))}"
    elif expected == "scope":
        assert streams and all(in_scope(s) for s in streams), f"{role}: out of scope: {sorted(set(streams))}"
    elif expected == "none":
        assert not streams, f"{role}: expected nothing, got {sorted(set(streams))}"


# ---------------------------------------------------------------------------- REST


def _rest(w: World, role: str, path: str, params: Any = None, *, key: str = "events", field: str = "stream"):
    r = w.http.get(path, params=params, headers=headers(role))
    if r.status_code != 200:
        return f"{r.status_code}:{r.json().get('code')}"
    if key == "":
        return []
    body = r.json()
    if key == "snapshot":
        manifest = body
        chunks = []
        for i in range(manifest["total"]):
            c = w.http.get(path, params=[*params, ("chunk", str(i)), ("at", str(manifest["position"]))],
                           headers=headers(role))
            assert c.status_code == 200, c.text
            idx, total = (int(x) for x in c.headers["X-Syncline-Chunk"].split("/"))
            chunks.append(Chunk(idx, total, c.headers["X-Syncline-Checksum"], c.content))
        _, content, _ = assemble_snapshot(chunks)
        return list(content)
    return [item[field] for item in body[key]]


DOC_SECRET, DOC_HANDBOOK = "/v1/docs/secret", "/v1/docs/handbook-intro"

#: route -> (how to read it, expected per role: viewer, member, admin, auditor, scoped)
REST_TABLE: dict[str, tuple[Any, tuple[str, str, str, str, str]]] = {
    "log": (lambda w, r: _rest(w, r, "/v1/log", {"limit": 1000}), ("user", "user", "all", "all", "scope")),
    "log?type=audit.*": (lambda w, r: _rest(w, r, "/v1/log", {"type": "audit.*"}),
                         ("none", "none", "sys", "sys", "none")),
    "log?type=*": (lambda w, r: _rest(w, r, "/v1/log", {"type": "*", "limit": 1000}),
                   ("user", "user", "all", "all", "scope")),
    "log?prefix=": (lambda w, r: _rest(w, r, "/v1/log", {"prefix": "", "limit": 1000}),
                    ("user", "user", "all", "all", "scope")),
    "log?stream=$audit": (lambda w, r: _rest(w, r, "/v1/log", {"stream": "$audit"}), (SYS, SYS, "sys", "sys", SYS)),
    "log?prefix=$": (lambda w, r: _rest(w, r, "/v1/log", {"prefix": "$"}), (SYS, SYS, "sys", "sys", SYS)),
    "log?stream=doc/secret": (lambda w, r: _rest(w, r, "/v1/log", {"stream": "doc/secret"}),
                              ("user", "user", "user", "user", OOS)),
    "deltas?prefix=": (lambda w, r: _rest(w, r, "/v1/deltas", {"prefix": ""}), ("user", "user", "all", "all", "scope")),
    "deltas?prefix=$": (lambda w, r: _rest(w, r, "/v1/deltas", {"prefix": "$"}), (SYS, SYS, "sys", "sys", SYS)),
    "sync/deltas?prefix=": (lambda w, r: _rest(w, r, "/v1/sync/deltas", {"prefix": ""}),
                            ("user", "user", "all", "all", "scope")),
    "sync/deltas?stream=$security": (lambda w, r: _rest(w, r, "/v1/sync/deltas", {"stream": "$security"}),
                                     (SYS, SYS, "sys", "sys", SYS)),
    "sync/deltas?prefix=doc/": (lambda w, r: _rest(w, r, "/v1/sync/deltas", {"prefix": "doc/"}),
                                ("user", "user", "user", "user", "scope")),
    "/v1/events/poll": (lambda w, r: _rest(w, r, "/v1/events/poll", {"limit": 1000}),
                        ("user", "user", "all", "all", "scope")),
    "/api/events/poll": (lambda w, r: _rest(w, r, "/api/events/poll", {"limit": 1000}),
                         ("user", "user", "all", "all", "scope")),
    "streams/$audit": (lambda w, r: _rest(w, r, "/v1/streams/$audit"), (SYS, SYS, "sys", "sys", SYS)),
    "streams/$security": (lambda w, r: _rest(w, r, "/v1/streams/$security"), (SYS, SYS, "sys", "sys", SYS)),
    "streams/$conflicts": (lambda w, r: _rest(w, r, "/v1/streams/$conflicts", key=""), (SYS, SYS, "ok", "ok", SYS)),
    "streams/$dlq/billing": (lambda w, r: _rest(w, r, "/v1/streams/$dlq/billing", key=""),
                             (SYS, SYS, "ok", "ok", SYS)),
    "streams/dm/alice": (lambda w, r: _rest(w, r, "/v1/streams/dm/alice", key=""), (NO, NO, "ok", NO, NO)),
    "streams/dm/sam": (lambda w, r: _rest(w, r, "/v1/streams/dm/sam", key=""), (NO, NO, "ok", NO, "ok")),
    "streams/doc/secret": (lambda w, r: _rest(w, r, "/v1/streams/doc/secret"), ("user", "user", "user", "user", OOS)),
    "streams/doc/handbook-intro": (lambda w, r: _rest(w, r, "/v1/streams/doc/handbook-intro"),
                                   ("user", "user", "user", "user", "scope")),
    "stats/streams/$audit": (lambda w, r: _rest(w, r, "/v1/stats/streams/$audit", key=""),
                             (SYS, SYS, "ok", "ok", SYS)),
    "stats/streams/room/sales": (lambda w, r: _rest(w, r, "/v1/stats/streams/room/sales", key=""),
                                 ("ok", "ok", "ok", "ok", OOS)),
    "snapshots?prefix=": (lambda w, r: _rest(w, r, "/v1/snapshots", [("prefix", "")], key="snapshot"),
                          ("user", "user", "all", "all", "scope")),
    "snapshots?prefix=$": (lambda w, r: _rest(w, r, "/v1/snapshots", [("prefix", "$")], key="snapshot"),
                           (SYS, SYS, "sys", "sys", SYS)),
    "docs/secret": (lambda w, r: _rest(w, r, DOC_SECRET, key=""), ("ok", "ok", "ok", "ok", OOS)),
    "docs/secret?at=1": (lambda w, r: _rest(w, r, DOC_SECRET, {"at": "1"}, key=""), ("ok", "ok", "ok", "ok", OOS)),
    "docs/secret/diff": (lambda w, r: _rest(w, r, DOC_SECRET + "/diff", key=""), ("ok", "ok", "ok", "ok", OOS)),
    "docs/secret/snapshot": (lambda w, r: _rest(w, r, DOC_SECRET + "/snapshot", key=""),
                             ("ok", "ok", "ok", "ok", OOS)),
    "docs/handbook-intro": (lambda w, r: _rest(w, r, DOC_HANDBOOK, key=""), ("ok",) * 5),
    "records/tasks/1": (lambda w, r: _rest(w, r, "/v1/records/tasks/1", key=""), ("ok", "ok", "ok", "ok", OOS)),
    "feeds/users/bob": (lambda w, r: _rest(w, r, "/v1/feeds/users/bob", {"limit": 500}, key="items"),
                        ("user", "user", "user", "user", "scope")),
    "feeds/rooms/sales": (lambda w, r: _rest(w, r, "/v1/feeds/rooms/sales", key=""), ("ok", "ok", "ok", "ok", OOS)),
    "rooms/sales/history": (lambda w, r: _rest(w, r, "/v1/rooms/sales/history", key=""),
                            ("ok", "ok", "ok", "ok", OOS)),
    "rooms/sales/presence": (lambda w, r: _rest(w, r, "/v1/rooms/sales/presence", key=""),
                             ("ok", "ok", "ok", "ok", OOS)),
    "rooms/support/presence": (lambda w, r: _rest(w, r, "/v1/rooms/support/presence", key=""), ("ok",) * 5),
    "commands/{id}": (lambda w, r: _rest(w, r, f"/v1/commands/{w.command_id}", key=""),
                      ("ok", "ok", "ok", "ok", OOS)),
    "conflicts": (lambda w, r: _rest(w, r, "/v1/conflicts", key=""), ("ok",) * 5),
    "bus/groups": (lambda w, r: _rest(w, r, "/v1/bus/groups", key=""), (NO, NO, "ok", NO, NO)),
}


@pytest.mark.parametrize("route", list(REST_TABLE))
def test_rest_read_routes(world, route):
    read, expected = REST_TABLE[route]
    for role, want in zip(ROLES, expected):
        check(role, want, read(world, role))


# ---------------------------------------------------------------------------- native WebSocket


async def _sub(w: World, role: str, system_only: bool = False, **fields: Any) -> str | list[str]:
    """Subscribe from 0 and collect streams until the marker (readable by all) arrives;
    for a system-only selection, until the first batch."""
    marker = w.marker()
    c = await NativeClient.connect(w.g.ws_url, token(role))
    try:
        await c.expect(P.WELCOME)
        await c.send(P.SUB, id="s", after=0, **fields)
        streams: list[str] = []
        while True:
            msg = await c.recv(10)
            if msg["t"] == P.ERROR:
                return msg["code"]
            if msg["t"] != P.EVENTS:
                continue
            streams += [e["stream"] for e in msg["events"]]
            await c.send(P.ACK, sub="s", upto=msg["next"])
            if system_only or any(e["position"] >= marker for e in msg["events"]):
                return streams
    finally:
        await c.close()


async def _snap(w: World, role: str, **fields: Any) -> str | list[str]:
    c = await NativeClient.connect(w.g.ws_url, token(role))
    try:
        await c.expect(P.WELCOME)
        await c.send(P.SNAP, id="n", **fields)
        chunks = []
        while True:
            msg = await c.recv(10)
            if msg["t"] == P.ERROR:
                return msg["code"]
            if msg["t"] == P.SNAPSHOT:
                chunks.append(Chunk(msg["index"], msg["total"], msg["checksum"], msg["data"]))
                if len(chunks) == msg["total"]:
                    return list(assemble_snapshot(chunks)[1])
    finally:
        await c.close()


async def _request(w: World, role: str, *msgs: tuple[str, dict]) -> str:
    """Send messages in order; the answer to the last one: an error code, or its type
    (``opacks``: the first result's kind, or its reason when rejected)."""
    c = await NativeClient.connect(w.g.ws_url, token(role))
    try:
        await c.expect(P.WELCOME)
        answer = ""
        for t, fields in msgs:
            await c.send(t, **fields)
            while True:
                msg = await c.recv(10)
                if msg["t"] == P.ERROR:
                    return msg["code"]
                if msg["t"] in (P.JOINED, P.SENT, P.EVENTS, P.LEFT):
                    answer = msg["t"]
                    break
                if msg["t"] == P.OPACKS:
                    r = msg["results"][0]
                    answer = r.get("reason") or r["kind"]
                    break
        return answer
    finally:
        await c.close()


def _doc_op() -> dict:
    return {"kind": "doc", "op": f"d-{uuid.uuid4().hex}", "stream": "doc/handbook-intro",
            "update": yjs_update("more")}


def _rec(role: str) -> list[dict]:
    return [record_op(TOKENS[role]["user"], f"rec/tasks/w-{uuid.uuid4().hex[:8]}")]


WS_TABLE: dict[str, tuple[Any, tuple[str, ...]]] = {
    "sub types=[*]": (lambda w, r: _sub(w, r, types=["*"]), ("user", "user", "all", "all", "scope")),
    "sub (no filter)": (lambda w, r: _sub(w, r), ("user", "user", "all", "all", "scope")),
    # (the protocol refuses an empty prefix outright: no selection of everything that way)
    "sub prefixes=['']": (lambda w, r: _sub(w, r, prefixes=[""]), ("invalid_message",) * 5),
    "sub prefixes=[d, r, n]": (lambda w, r: _sub(w, r, prefixes=["d", "r", "n"]), ("user",) * 4 + ("scope",)),
    "sub types=[audit.*] streams=[$audit]": (lambda w, r: _sub(w, r, True, streams=["$audit"], types=["audit.*"]),
                                             ("system_stream_forbidden",) * 2 + ("sys", "sys")
                                             + ("system_stream_forbidden",)),
    "sub prefixes=[$]": (lambda w, r: _sub(w, r, True, prefixes=["$"]),
                         ("system_stream_forbidden",) * 2 + ("sys", "sys") + ("system_stream_forbidden",)),
    "sub streams=[doc/secret]": (lambda w, r: _sub(w, r, streams=["doc/secret", "room/support"]),
                                 ("user",) * 4 + ("out_of_scope",)),
    "sub rooms=[sales]": (lambda w, r: _sub(w, r, rooms=["sales", "support"]), ("user",) * 4 + ("out_of_scope",)),
    "sub inbox": (lambda w, r: _sub(w, r, inbox=True, rooms=["support"]), ("user",) * 5),
    "snap prefixes=[d, r, n]": (lambda w, r: _snap(w, r, prefixes=["d", "r", "n"]), ("user",) * 4 + ("scope",)),
    "snap prefixes=[$]": (lambda w, r: _snap(w, r, prefixes=["$"]),
                          ("system_stream_forbidden",) * 2 + ("sys", "sys") + ("system_stream_forbidden",)),
    "snap streams=[$audit]": (lambda w, r: _snap(w, r, streams=["$audit"]),
                              ("system_stream_forbidden",) * 2 + ("sys", "sys") + ("system_stream_forbidden",)),
    "snap streams=[doc/secret]": (lambda w, r: _snap(w, r, streams=["doc/secret"]),
                                  ("user",) * 4 + ("out_of_scope",)),
    "join sales": (lambda w, r: _request(w, r, (P.JOIN, {"room": "sales"})), (P.JOINED,) * 4 + ("out_of_scope",)),
    "join support + say": (lambda w, r: _request(w, r, (P.JOIN, {"room": "support"}),
                                                 (P.SAY, {"room": "support", "data": {"x": 1}, "id": "m1"})),
                           ("forbidden", P.SENT, P.SENT, "forbidden", P.SENT)),
    "dm alice": (lambda w, r: _request(w, r, (P.DM, {"to": "alice", "data": {"x": 1}, "id": "d1"})),
                 ("forbidden", P.SENT, P.SENT, "forbidden", "out_of_scope")),
    "ops record": (lambda w, r: _request(w, r, (P.OPS, {"id": "o1", "ops": _rec(r)})),
                   ("forbidden", "applied", "applied", "forbidden", "out_of_scope")),
    "ops doc (read-only scope)": (lambda w, r: _request(w, r, (P.OPS, {"id": "o2", "ops": [_doc_op()]})),
                                  ("forbidden", "applied", "applied", "forbidden", "out_of_scope")),
}


@pytest.mark.parametrize("message", list(WS_TABLE))
async def test_native_ws_messages(world, message):
    run, expected = WS_TABLE[message]
    for role, want in zip(ROLES, expected):
        out = await run(world, role)
        if want in (P.JOINED, P.SENT, "applied"):
            assert out == want, f"{role}: expected {want}, got {out}"
        else:
            check(role, want, out)


async def test_live_direct_messages_follow_the_inbox_scope(world):
    """A scoped token without ``read:dm/<self>`` does not get its direct messages live
    (nor from the log); with it, it does."""
    no_dm = make_token(tenant=TENANT, user="sid", roles=["member"], scopes=["write:room/support"])
    with_dm = token("scoped")
    receivers = [await NativeClient.connect(world.g.ws_url, t) for t in (no_dm, with_dm)]
    try:
        for c in receivers:
            await c.expect(P.WELCOME)
        bob = await NativeClient.connect(world.g.ws_url, token("admin"))
        await bob.expect(P.WELCOME)
        for to in ("sid", "sam"):
            await bob.send(P.DM, to=to, data={"secret": to}, id=f"live-{to}")
            await bob.expect(P.SENT)
        await bob.close()
        got = await receivers[1].expect(P.MSG)
        assert got["direct"] and got["data"] == {"secret": "sam"}
        with pytest.raises(TimeoutError):
            await receivers[0].expect(P.MSG, timeout=1.0)
        metrics = world.http.get("/metrics").text
        assert 'syncline_access_hidden_events_total{path="ws_live"}' in metrics
    finally:
        for c in receivers:
            await c.close()


# ---------------------------------------------------------------------------- Yjs


async def _yjs(w: World, role: str, doc: str) -> str:
    """Connect, sync, send one update: ``refused:<code>`` (close), ``read-only``
    (permission denied, document unchanged) or ``written``."""
    before = stream_events(w, doc)
    url = f"{w.g.ws_url}/v1/yjs/{doc}?token={token(role)}"
    try:
        async with websockets.connect(url, ping_interval=None, open_timeout=10) as ws:
            await ws.send(encode_sync_update(yjs_update(f"from {role}")))
            deadline = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < deadline:
                try:
                    msg = decode_message(await asyncio.wait_for(ws.recv(), 0.05))
                except TimeoutError:
                    if len(stream_events(w, doc)) > len(before):
                        return "written"
                    continue
                if isinstance(msg, PermissionDenied):
                    await asyncio.sleep(0.2)  # (a write would have been appended by now)
                    assert len(stream_events(w, doc)) == len(before)
                    return "read-only"
            return "nothing"
    except websockets.ConnectionClosed as e:
        return f"refused:{e.rcvd.code if e.rcvd else None}:{e.rcvd.reason if e.rcvd else None}"
    except websockets.InvalidStatus as e:
        return f"refused:{e.response.status_code}"


def stream_events(w: World, doc: str) -> list:
    return w.http.get(f"/v1/streams/doc/{doc}", params={"limit": 1000}, headers=headers("admin")).json()["events"]


YJS_TABLE = {
    "secret": ("read-only", "written", "written", "read-only", "refused:4403:out_of_scope"),
    "handbook-intro": ("read-only", "written", "written", "read-only", "read-only"),
}


@pytest.mark.parametrize("doc", list(YJS_TABLE))
async def test_yjs_documents(world, doc):
    for role, want in zip(ROLES, YJS_TABLE[doc]):
        got = await _yjs(world, role, doc)
        assert got == want, f"{role} on {doc}: expected {want}, got {got}"
    metrics = world.http.get("/metrics").text
    assert 'syncline_access_refused_total{code="read_only",path="yjs"}' in metrics


# ---------------------------------------------------------------------------- writes over REST


REST_WRITES = {
    "append room/support": ("/v1/streams/room/support", {"events": [{"type": "note.added"}]},
                            ("403:forbidden", "201", "201", "403:forbidden", "201")),
    "append room/sales": ("/v1/streams/room/sales", {"events": [{"type": "note.added"}]},
                          ("403:forbidden", "201", "201", "403:forbidden", OOS)),
    "append $audit": ("/v1/streams/$audit", {"events": [{"type": "audit.fake"}]}, (NO,) * 5),
    "ops record": ("/v1/ops", None, ("403:forbidden", "200", "200", "403:forbidden", OOS)),
}


@pytest.mark.parametrize("write", list(REST_WRITES))
def test_rest_writes(world, write):
    path, body, expected = REST_WRITES[write]
    for role, want in zip(ROLES, expected):
        payload = body if body is not None else {"ops": _rec(role)}
        r = world.http.post(path, json=payload, headers=headers(role))
        got = str(r.status_code) if r.status_code < 300 else f"{r.status_code}:{r.json().get('code')}"
        assert got == want, f"{role}: {write}: expected {want}, got {got} {r.text[:200]}"


# ---------------------------------------------------------------------------- the claim


@pytest.mark.parametrize("scopes", [
    "read:doc/*", [], ["admin:doc/x"], ["read:"], ["read:Doc/x"], ["read:doc//x"], [1], ["read:doc/x y"],
    ["read:" + "a" * 300], [f"read:doc/{i}" for i in range(65)],
])
def test_malformed_scopes_claim_is_refused(world, scopes):
    bad = make_token(tenant=TENANT, user="mallory", roles=["member"], scopes=scopes)
    r = world.http.get("/v1/log", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and r.json()["code"] == "token_malformed", r.text


async def test_malformed_scopes_claim_closes_websockets(world):
    bad = make_token(tenant=TENANT, user="mallory", roles=["member"], scopes=["read:doc//x"])
    for path in ("/v1/ws", "/v1/yjs/handbook-intro"):
        with pytest.raises(websockets.ConnectionClosed) as e:
            async with websockets.connect(f"{world.g.ws_url}{path}?token={bad}", ping_interval=None) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        assert e.value.rcvd is not None and e.value.rcvd.code == 4401


async def test_welcome_names_the_scopes(world):
    c = await NativeClient.connect(world.g.ws_url, token("scoped"))
    try:
        welcome = await c.expect(P.WELCOME)
        assert sorted(welcome["scopes"]) == sorted(SCOPES)
    finally:
        await c.close()
    c = await NativeClient.connect(world.g.ws_url, token("auditor"))
    try:
        welcome = await c.expect(P.WELCOME)
        assert "scopes" not in welcome and set(welcome["perms"]) == {"read", "system_read"}
    finally:
        await c.close()


def test_refusals_and_hidden_events_are_counted(world):
    world.http.get("/v1/streams/$audit", headers=headers("viewer"))
    world.http.get("/v1/log", params={"type": "*"}, headers=headers("viewer"))
    metrics = world.http.get("/metrics").text
    assert 'syncline_access_refused_total{code="system_stream_forbidden",path="rest"}' in metrics
    assert 'syncline_access_hidden_events_total{path="rest"}' in metrics


def test_cli_mints_scoped_tokens_the_gateway_enforces(world, monkeypatch):
    from click.testing import CliRunner

    from syncline.cli import main

    monkeypatch.setenv("SYNCLINE_JWT_SECRET", world.g.settings.jwt_secret)
    out = CliRunner().invoke(main, ["token", "--tenant", TENANT, "--user", "sam", "--scope", "read:doc/handbook*",
                                    "--scope", "write:room/support"])
    assert out.exit_code == 0, out.output
    auth = {"Authorization": f"Bearer {out.output.strip()}"}
    assert world.http.get("/v1/streams/doc/secret", headers=auth).json()["code"] == "out_of_scope"
    assert world.http.get("/v1/streams/doc/handbook-intro", headers=auth).status_code == 200
    streams = {e["stream"] for e in world.http.get("/v1/log", params={"limit": 1000}, headers=auth).json()["events"]}
    assert streams and all(in_scope(s) for s in streams)
    bad = CliRunner().invoke(main, ["token", "--tenant", TENANT, "--user", "sam", "--scope", "admin:doc/*"])
    assert bad.exit_code != 0 and "--scope" in bad.output


async def test_a_narrower_token_does_not_inherit_rooms_out_of_its_scopes(world):
    """Room membership survives reconnects; reconnecting with a scoped token that does
    not cover a room neither lists it in ``welcome`` nor delivers its messages."""
    wide = make_token(tenant=TENANT, user="sam", roles=["member"])
    c = await NativeClient.connect(world.g.ws_url, wide, query="client=cx")
    await c.expect(P.WELCOME)
    for room in ("sales", "support"):
        await c.send(P.JOIN, room=room)
        await c.expect(P.JOINED)
    await c.close()
    c = await NativeClient.connect(world.g.ws_url, token("scoped"), query="client=cx")
    try:
        welcome = await c.expect(P.WELCOME)
        assert welcome["rooms"] == ["support"]
        bob = await NativeClient.connect(world.g.ws_url, token("admin"))
        await bob.expect(P.WELCOME)
        for room in ("sales", "support"):
            await bob.send(P.JOIN, room=room)
            await bob.expect(P.JOINED)
            await bob.send(P.SAY, room=room, data={"in": room}, id=f"say-{room}")
            await bob.expect(P.SENT)
        await bob.close()
        got = await c.expect(P.MSG)
        assert got["room"] == "support"
        with pytest.raises(TimeoutError):
            await c.expect(P.MSG, timeout=1.0)
    finally:
        await c.close()
