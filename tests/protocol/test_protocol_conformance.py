"""The native protocol's conformance suite: every scenario against every target.

The targets (conftest.py) are the protocol core on an in-memory log, and the live
gateway over real sockets on SQLite and on PostgreSQL. A scenario that passes on one
and fails on another has found a place where the server the simulator checks is not
the server production runs.
"""
from __future__ import annotations

import time

import pycrdt
from protocol_targets import BATCH, MAX_BEHIND, RATE_LIMIT, WINDOW

from syncline.engine import protocol as P
from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.records import ClientOp


def record_op(n: int, user: str, client: str = "c1", stream: str = "rec/notes/1") -> dict:
    return ClientOp(f"{client}.{n}", client, user, stream, VectorClock({client: n}),
                    HLCTimestamp(int(time.time() * 1000), 0, client), {"title": f"t{n}"}, (), n - 1).to_wire()


def yjs_update(text: str) -> bytes:
    d = pycrdt.Doc()
    d.get("text", type=pycrdt.Text).insert(0, text)
    return d.get_update()


async def drain_events(conn, sub: str, upto: int) -> list[int]:
    """Receive and ack ``events`` batches until ``next`` reaches ``upto``; the positions seen."""
    seen: list[int] = []
    while True:
        batch = await conn.expect(P.EVENTS)
        assert batch["sub"] == sub
        seen += [e["position"] for e in batch["events"]]
        await conn.send(P.ACK, sub=sub, upto=batch["next"])
        if batch["next"] >= upto:
            return seen


async def test_hello_and_welcome(target):
    a = await target.connect("alice", client="laptop")
    w = await a.expect(P.WELCOME)
    assert (w["tenant"], w["user"]) == ("acme", "alice") and w["session"] and isinstance(w["head"], int)
    assert w["max_behind"] == MAX_BEHIND and "heartbeat_s" in w and "rate_limit" in w
    await a.send(P.PING, id="p1")
    assert (await a.expect(P.PONG))["id"] == "p1"
    await a.close()


async def test_permissions_are_checked_per_message(target):
    v = await target.connect("vera", perms=("read",))
    await v.expect(P.WELCOME)
    await v.send(P.OPS, id="b1", ops=[record_op(1, "vera")])
    assert (await v.expect(P.ERROR))["code"] == "forbidden"
    await v.send(P.SAY, room="lobby", data="x")
    assert (await v.expect(P.ERROR))["code"] == "forbidden"
    await v.send(P.COMMAND, type="payment.capture")
    assert (await v.expect(P.ERROR))["code"] == "websocket_forbidden"
    await v.close()


async def test_subscribe_resume_and_acked_batches(target):
    await target.seed("x/1", 45)
    a = await target.connect("alice")
    head = (await a.expect(P.WELCOME))["head"]
    await a.send(P.SUB, id="s", prefixes=["x/"], after=0)
    # at most WINDOW batches go out before an ack
    first = [await a.expect(P.EVENTS) for _ in range(WINDOW)]
    assert [len(b["events"]) for b in first] == [BATCH] * WINDOW
    assert first[1]["prev"] == first[0]["next"]
    assert not [m for m in await a.quiet(0.4) if m["t"] == P.EVENTS]
    await a.send(P.ACK, sub="s", upto=first[-1]["next"])
    rest = await drain_events(a, "s", head)
    positions = [e["position"] for b in first for e in b["events"]] + rest
    assert positions == sorted(positions) and len(positions) == 45
    await a.close()
    # resume: after a position, and from hello's resume map
    b = await target.connect("alice")
    await b.expect(P.WELCOME)
    await b.send(P.SUB, id="s", prefixes=["x/"], after=positions[9])
    assert (await b.expect(P.EVENTS))["events"][0]["position"] == positions[10]
    await b.send(P.HELLO, resume={"r": positions[39]})
    await b.send(P.SUB, id="r", prefixes=["x/"])
    batch = await b.expect(P.EVENTS)
    while batch["sub"] != "r":
        batch = await b.expect(P.EVENTS)
    assert [e["position"] for e in batch["events"]] == positions[40:]
    await b.close()


async def test_refresh_when_too_far_behind(target):
    await target.seed("x/1", MAX_BEHIND + 5)
    a = await target.connect("alice")
    await a.expect(P.WELCOME)
    await a.send(P.SUB, id="s", prefixes=["x/"], after=0)
    r = await a.expect(P.REFRESH)
    assert r["sub"] == "s" and r["reason"] == "too_far_behind" and r["head"] >= MAX_BEHIND + 5
    await a.close()


async def test_ops_get_one_outcome_each_in_order(target):
    a = await target.connect("alice", client="c1")
    await a.expect(P.WELCOME)
    update = yjs_update("hello")
    ops = [
        record_op(1, "alice"),
        record_op(2, "mallory"),  # another user: this op only is rejected
        {"kind": "op", "op": "broken"},  # malformed
        {"kind": "doc", "op": "d1", "client": "c1", "stream": "doc/readme", "update": update},
        {"kind": "doc", "op": "d2", "client": "c1", "stream": "doc/readme", "update": b"\xff\xff\xff"},
    ]
    await a.send(P.OPS, id="b1", ops=ops)
    results = (await a.expect(P.OPACKS))["results"]
    assert [r["kind"] for r in results] == ["applied", "rejected", "rejected", "applied", "rejected"]
    assert results[1]["reason"] == "invalid_op" and results[4]["reason"] == "invalid_value"
    # the same ops again: the applied ones are duplicates, nothing is written twice
    await a.send(P.OPS, id="b2", ops=[ops[0], ops[3]])
    again = (await a.expect(P.OPACKS))["results"]
    assert [r["kind"] for r in again] == ["duplicate", "duplicate"]
    await a.send(P.SUB, id="s", prefixes=["doc/", "rec/"], after=0)
    batch = await a.expect(P.EVENTS)
    kinds = sorted(e["type"] for e in batch["events"])
    assert kinds == ["crdt.update", "record.patched"], kinds
    await a.close()


async def test_rooms_messages_and_presence(target):
    a = await target.connect("alice", client="a1")
    b = await target.connect("bob", client="b1")
    for c in (a, b):
        await c.expect(P.WELCOME)
    await a.send(P.SAY, room="lobby", data="too early", id="m0")
    assert (await a.expect(P.ERROR))["code"] == "forbidden"
    for c in (a, b):
        await c.send(P.JOIN, room="lobby")
        joined = await c.expect(P.JOINED)
        assert joined["room"] == "lobby" and {m["user"] for m in joined["members"]} >= {"alice"} - {"x"}
    await a.send(P.SAY, room="lobby", data={"text": "hi"}, id="m1")
    sent = await a.expect(P.SENT)
    assert sent["id"] == "m1" and sent["pos"] > 0
    msg = await b.expect(P.MSG)
    assert (msg["room"], msg["from"], msg["data"], msg["pos"]) == ("lobby", "alice", {"text": "hi"}, sent["pos"])
    assert not [m for m in await a.quiet(0.3) if m["t"] == P.MSG]  # not echoed to the sender
    await b.send(P.PRESENCE, room="lobby", state={"typing": True})
    pres = await a.expect(P.PRESENCE, skip=())
    while pres.get("state") is None:
        pres = await a.expect(P.PRESENCE, skip=())
    assert pres["user"] == "bob" and pres["state"] == {"typing": True}
    # the room's stream holds the message: a subscriber who was away gets it on resume
    await b.send(P.SUB, id="room", rooms=["lobby"], after=0)
    batch = await b.expect(P.EVENTS)
    assert ("room.message", "alice") in [(e["type"], e["data"].get("from")) for e in batch["events"]]
    await a.send(P.LEAVE, room="lobby")
    assert (await a.expect(P.LEFT))["room"] == "lobby"
    for c in (a, b):
        await c.close()


async def test_direct_messages_wait_in_the_inbox(target):
    a = await target.connect("alice")
    await a.expect(P.WELCOME)
    await a.send(P.DM, to="carol", data="while you were out", id="d1")
    pos = (await a.expect(P.SENT))["pos"]
    await a.send(P.DM, to="carol", data="while you were out", id="d1")  # resent: stored once
    again = await a.expect(P.SENT)
    assert again["pos"] == pos and again["duplicate"] is True
    c = await target.connect("carol")
    await c.expect(P.WELCOME)
    await c.send(P.SUB, id="inbox", inbox=True, after=0)
    batch = await c.expect(P.EVENTS)
    assert [(e["type"], e["position"], e["data"]["from"], e["data"]["data"]) for e in batch["events"]] == [
        ("dm.message", pos, "alice", "while you were out")]
    # live, once the recipient is connected
    await a.send(P.DM, to="carol", data="now", id="d2")
    live = await c.expect(P.MSG, skip=("presence", "events"))
    assert live["direct"] is True and live["data"] == "now" and live["from"] == "alice"
    # nobody else reads carol's inbox
    b = await target.connect("bob")
    await b.expect(P.WELCOME)
    await b.send(P.SUB, id="peek", streams=["dm/carol"])
    assert (await b.expect(P.ERROR))["code"] == "forbidden"
    await b.send(P.SUB, id="all", prefixes=["dm/"], after=0)
    await b.send(P.SUB, id="typed", types=["dm.*"], after=0)
    await b.send(P.SUB, id="everything", after=0)
    seen = [e for m in await b.quiet(0.5) if m["t"] == P.EVENTS for e in m["events"]]
    assert not [e for e in seen if e["stream"].startswith("dm/")], seen
    for x in (a, b, c):
        await x.close()


async def test_rate_limit_warns_then_disconnects(target):
    a = await target.connect("alice")
    await a.expect(P.WELCOME)
    for i in range(RATE_LIMIT + 2):  # (pings are protocol upkeep: never counted)
        await a.send(P.PING, id=i)
    for i in range(RATE_LIMIT + 2):
        await a.send(P.LEAVE, room=f"r{i}")
    warn = await a.expect(P.WARN, skip=("pong", "left"))
    assert warn["code"] == "rate_limited"
    bye = await a.expect(P.BYE, skip=("pong", "left"))
    assert bye["code"] == "rate_limited"
    assert await a.closed_with() == P.CLOSE_RATE_LIMITED


async def test_a_silent_connection_is_closed_as_stale(target):
    a = await target.connect("alice")
    await a.expect(P.WELCOME)
    bye = await a.expect(P.BYE, timeout=5)
    assert bye["code"] == "stale"
    assert await a.closed_with() == P.CLOSE_STALE


async def test_shutdown_says_why(target):
    a = await target.connect("alice")
    await a.expect(P.WELCOME)
    await target.shutdown([a])
    bye = await a.expect(P.BYE)
    assert bye["code"] == "shutdown"
    assert await a.closed_with() == P.CLOSE_GOING_AWAY
