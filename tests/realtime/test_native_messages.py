"""Room and direct messages on the native protocol (`/v1/ws`, docs/protocol.md) across two
gateways on PostgreSQL + a private Redis, clients through the round-robin proxy (issue 13,
part 3): they are class C, so

- ``dm {to, data, id}`` is appended to ``dm/<to>`` as ``dm.message``, acked ``sent {id, pos}``;
- a DM to an OFFLINE user arrives when that user connects to the other gateway and
  subscribes to its inbox (``sub {id, inbox: true}``);
- a live DM reaches the recipient on the other gateway as ``msg {direct, from, data, pos}``;
- only its owner may read an inbox (``sub {streams: ["dm/bob"]}`` by another user: ``forbidden``);
- a room message sent while Redis is DOWN reaches a member on the other gateway (log polling).

Each test has its own user names; the module shares one cluster (the Redis outage is last).
"""
from __future__ import annotations

import asyncio

import httpx
import pytest
from cluster import make_token, pg_redis_cluster
from rtclients import Native, until

ACK_S = 5
DELIVER_S = 5  # the log is polled every 0.2 s here


@pytest.fixture(scope="module")
def nc(tmp_path_factory, pg_server, redis_server, rt_gateways):
    with pg_redis_cluster(tmp_path_factory.mktemp("native"), pg_server, redis_server, n=rt_gateways,
                          label="nat") as c:
        yield c


async def _connect(nc, user: str) -> tuple[Native, int]:
    n = await Native.connect(nc.proxy.ws_url, user)
    return n, nc.proxy.last()


def _stream_events(gw, stream: str, user: str) -> list[dict]:
    r = httpx.get(f"{gw.url}/v1/streams/{stream}", params={"limit": 1000},
                  headers={"Authorization": f"Bearer {make_token(user)}"}, timeout=10)
    r.raise_for_status()
    return r.json()["events"]


def _sent(ref: str):
    return lambda m: m["t"] == "sent" and m.get("id") == ref


def _error(ref: str):
    return lambda m: m["t"] == "error" and m.get("ref") == ref


async def test_dm_is_appended_to_the_recipients_inbox_and_acked_with_its_position(nc):
    alice, _ = await _connect(nc, "alice1")
    try:
        await alice.send("dm", to="bob1", data={"text": "hi bob"}, id="d1")
        sent = await alice.wait_for(lambda m: _sent("d1")(m) or _error("d1")(m), ACK_S, "sent {id: d1}")
        assert sent["t"] == "sent", sent
        assert isinstance(sent["pos"], int) and sent["pos"] > 0, sent
    finally:
        await alice.close()
    events = _stream_events(nc[0], "dm/bob1", "bob1")
    assert [(e["type"], e["position"]) for e in events] == [("dm.message", sent["pos"])], events
    data = events[0]["data"]
    assert data["from"] == "alice1" and data["data"] == {"text": "hi bob"}, data


async def test_dm_to_an_offline_user_arrives_when_they_connect_to_the_other_gateway(nc):
    alice, alice_gw = await _connect(nc, "alice2")
    try:
        await alice.send("dm", to="olga2", data={"text": "while you were out"}, id="d2")
        # the sender may move on once acked (or, before the fix, at once)
        try:
            await alice.wait_for(_sent("d2"), ACK_S, "sent {id: d2}")
        except TimeoutError:
            pass
    finally:
        await alice.close()
    olga, olga_gw = await _connect(nc, "olga2")
    try:
        if len(nc) > 1:
            assert olga_gw != alice_gw, (alice_gw, olga_gw)
        await olga.send("sub", id="inbox", inbox=True)

        def delivered(m: dict) -> bool:
            return m["t"] == "error" or (m["t"] == "events" and m.get("sub") == "inbox" and any(
                e["type"] == "dm.message" for e in m["events"]))
        got = await olga.wait_for(delivered, DELIVER_S, "the dm.message in an inbox events batch")
        assert got["t"] == "events", got
        dms = [e for e in olga.events("inbox") if e["type"] == "dm.message"]
        assert len(dms) == 1, dms
        assert dms[0]["stream"] == "dm/olga2"
        assert dms[0]["data"]["from"] == "alice2" and dms[0]["data"]["data"] == {"text": "while you were out"}
        # the inbox holds only olga's messages
        assert {e["stream"] for e in olga.events("inbox")} == {"dm/olga2"}
    finally:
        await olga.close()


async def test_live_dm_reaches_the_recipient_on_the_other_gateway(nc):
    rita, rita_gw = await _connect(nc, "rita3")
    alice, alice_gw = await _connect(nc, "alice3")
    try:
        if len(nc) > 1:
            assert rita_gw != alice_gw
        await alice.send("dm", to="rita3", data={"n": 1}, id="d3")
        msg = await rita.wait_for(lambda m: m["t"] == "msg", DELIVER_S, "the direct msg at rita")
        assert msg.get("direct") is True and msg["from"] == "alice3" and msg["data"] == {"n": 1}, msg
        assert isinstance(msg.get("pos"), int), f"msg without its log position: {msg}"
        sent = await alice.wait_for(_sent("d3"), ACK_S, "sent {id: d3}")
        assert sent["pos"] == msg["pos"]
        # once: not again from the log follower a poll or two later
        await asyncio.sleep(0.6)
        assert len([m for m in rita.inbox if m["t"] == "msg"]) == 1, [m for m in rita.inbox if m["t"] == "msg"]
    finally:
        await alice.close()
        await rita.close()


async def test_subscribing_to_another_users_inbox_is_forbidden(nc):
    mallory, _ = await _connect(nc, "mallory4")
    try:
        await mallory.send("sub", id="spy", streams=["dm/bob4"])
        reply = await mallory.wait_for(lambda m: m["t"] in ("error", "events") and m.get("ref", m.get("sub")) == "spy",
                                       ACK_S, "an error for sub {streams: [dm/bob4]}")
        assert reply["t"] == "error" and reply["code"] == "forbidden", reply
    finally:
        await mallory.close()


async def test_room_message_while_redis_is_down_reaches_a_member_on_the_other_gateway(nc):
    """Last in the module: it kills Redis (and brings it back afterwards)."""
    room = "lobby5"
    ann, ann_gw = await _connect(nc, "ann5")
    ben, ben_gw = await _connect(nc, "ben5")
    try:
        if len(nc) > 1:
            assert ann_gw != ben_gw
        for n in (ann, ben):
            await n.send("join", room=room)
            await n.wait_for(lambda m: m["t"] == "joined" and m["room"] == room, ACK_S, "joined")
        nc.redis.kill()
        await until(lambda: all(g.redis_state() not in ("up", None) for g in nc.gateways), 10,
                    "every gateway to see Redis down")
        await ann.send("say", room=room, data={"text": "anyone?"}, id="s5")
        msg = await ben.wait_for(lambda m: m["t"] == "msg" and m.get("room") == room, DELIVER_S,
                                 "ann's room message at ben, with Redis down")
        assert msg["from"] == "ann5" and msg["data"] == {"text": "anyone?"}, msg
        assert isinstance(msg.get("pos"), int), msg
        sent = await ann.wait_for(_sent("s5"), ACK_S, "sent {id: s5}")
        assert sent["pos"] == msg["pos"]
        stored = [e for e in _stream_events(nc[0], f"room/{room}", "ben5") if e["type"] == "room.message"]
        assert [e["position"] for e in stored] == [sent["pos"]], stored
        assert stored[0]["data"]["from"] == "ann5" and stored[0]["data"]["data"] == {"text": "anyone?"}
    finally:
        await ann.close()
        await ben.close()
        if not nc.redis.ping():
            nc.redis.restart()
