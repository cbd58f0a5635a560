"""Yjs rooms follow the log: two gateways on one SQLite file and no Redis.

Each gateway has its own store, doorbell and hub (as two processes would), so the only
way an update crosses is the log. The process-level version of these tests, with real
`syncline serve` processes, PostgreSQL, Redis and JavaScript clients, is in
tests/realtime/.
"""
from __future__ import annotations

import base64
import sqlite3

import httpx
import pycrdt
from test_api_yjs import texts, wait_until, yclient

from syncline.engine.documents import DocSnapshot
from syncline.engine.lib0 import Reader


def snapshots(db_path: str, stream: str) -> list[tuple[int, bytes]]:
    with sqlite3.connect(db_path) as c:
        cols = [r[1] for r in c.execute("PRAGMA table_info(snapshots)")]
        state_col = "state" if "state" in cols else "data"
        return [(p, bytes(s)) for p, s in c.execute(
            f"SELECT position, {state_col} FROM snapshots WHERE stream = ? ORDER BY position", (stream,))]


def updates_upto(db_url_path: str, srv, stream: str, position: int) -> list[bytes]:
    events = httpx.get(f"{srv.url}/v1/streams/{stream}", params={"limit": 1000}, headers=srv.headers()).json()["events"]
    def raw(data):  # bytes travel as base64 in JSON
        return base64.b64decode(data["$b64"] if isinstance(data, dict) else data)

    return [raw(e["data"]) for e in events if e["position"] <= position]


def state_vector(doc: pycrdt.Doc) -> dict[int, int]:
    r = Reader(doc.get_state())
    return {r.read_var_uint("client"): r.read_var_uint("clock") for _ in range(r.read_var_uint("n"))}


def replay(updates: list[bytes]) -> pycrdt.Doc:
    d = pycrdt.Doc()
    for u in updates:
        d.apply_update(u)
    return d


async def test_two_gateways_without_redis_converge_and_snapshot_only_what_they_hold(gateway, tmp_path):
    path = f"{tmp_path}/shared.db"
    db = f"sqlite+aiosqlite:///{path}"
    g1 = gateway(database_url=db, poll_interval_s=0.2, yjs_doc_idle_s=0.3)
    g2 = gateway(database_url=db, poll_interval_s=0.2, yjs_doc_idle_s=0.3)
    d1, d2 = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(g1, "shared", d1, user="alice"), yclient(g2, "shared", d2, user="bob"):
        d1.get("text", type=pycrdt.Text).insert(0, "from A")
        await wait_until(lambda: texts(d2) == "from A", timeout=2)
        d2.get("text", type=pycrdt.Text).insert(6, ", from B")
        await wait_until(lambda: texts(d1) == "from A, from B", timeout=2)
        # a REST write (an offline client's queued update) reaches both rooms through the log
        w = pycrdt.Doc()
        w.apply_update(d1.get_update())
        before = w.get_state()
        w.get("text", type=pycrdt.Text).insert(0, "[rest] ")
        r = httpx.post(f"{g1.url}/v1/streams/doc/shared", headers=g1.headers(user="carol"), json={"events": [
            {"type": "crdt.update", "data": {"$b64": base64.b64encode(w.get_update(before)).decode()}}]})
        assert r.status_code == 201, r.text
        await wait_until(lambda: texts(d1) == texts(d2) == "[rest] from A, from B", timeout=2)
    # the rooms go idle and each gateway snapshots: every snapshot is exactly the replay
    # of the stream up to its position (none lacks the other gateway's update)
    def settled() -> bool:  # both rooms unloaded and their snapshot tasks done
        return all(not g.gw.yjs.rooms and not g.gw.yjs._tasks for g in (g1, g2))

    await wait_until(settled, timeout=5)
    assert snapshots(path, "doc/shared")
    for position, state in snapshots(path, "doc/shared"):
        want = replay(updates_upto(path, g1, "doc/shared", position))
        got = replay([state])
        assert texts(got) == texts(want) and state_vector(got) == state_vector(want), position
        DocSnapshot.of(state, position=position).verify()
    # a fresh gateway on the same file loads the full text
    g3 = gateway(database_url=db)
    d3 = pycrdt.Doc()
    async with yclient(g3, "shared", d3, user="dave"):
        await wait_until(lambda: texts(d3) == "[rest] from A, from B", timeout=2)


async def test_messages_cross_gateways_without_redis(gateway, tmp_path):
    from api_wsclient import NativeClient

    from syncline.engine import protocol as P

    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    g1 = gateway(database_url=db, poll_interval_s=0.2)
    g2 = gateway(database_url=db, poll_interval_s=0.2)
    a = await NativeClient.connect(g1.ws_url, g1.token(user="alice"))
    b = await NativeClient.connect(g2.ws_url, g2.token(user="bob"))
    for c in (a, b):
        await c.expect(P.WELCOME)
        await c.send(P.JOIN, room="lobby")
        await c.expect(P.JOINED)
    await a.send(P.SAY, room="lobby", data="across", id="m1")
    pos = (await a.expect(P.SENT))["pos"]
    got = await b.expect(P.MSG, timeout=3)
    assert (got["room"], got["from"], got["data"], got["pos"]) == ("lobby", "alice", "across", pos)
    # a direct message to a user who is offline waits in the inbox
    await a.send(P.DM, to="carol", data="while you were out", id="d1")
    dm_pos = (await a.expect(P.SENT))["pos"]
    carol = await NativeClient.connect(g2.ws_url, g2.token(user="carol"))
    await carol.expect(P.WELCOME)
    await carol.send(P.SUB, id="inbox", inbox=True)
    batch = await carol.expect(P.EVENTS, timeout=3)
    assert [(e["type"], e["position"], e["data"]["from"], e["data"]["data"]) for e in batch["events"]] == [
        ("dm.message", dm_pos, "alice", "while you were out")]
    # and only carol may read it
    await b.send(P.SUB, id="peek", streams=["dm/carol"])
    err = await b.expect(P.ERROR, timeout=3)
    assert err["code"] == "forbidden"
    for c in (a, b, carol):
        await c.close()
