"""The native protocol against a real server: resume, acks, heartbeat, rate limit, shutdown, rooms."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from api_wsclient import NativeClient
from waiting import HandClock

from syncline.engine import protocol as P


def append(srv, stream: str, n: int, start: int = 0, **tok) -> None:
    with httpx.Client(base_url=srv.url, headers=srv.headers(**tok)) as c:
        for i in range(start, start + n):
            r = c.post(f"/v1/streams/{stream}", json={"events": [{"type": "note.added", "data": {"i": i}}]})
            assert r.status_code == 201, r.text


async def collect(cl: NativeClient, sub: str, until_count: int, seen: list, timeout: float = 10) -> int:
    """Read events for `sub` (acking each batch) until `until_count` events are seen."""
    nxt = 0
    async with asyncio.timeout(timeout):
        while len(seen) < until_count:
            msg = await cl.expect(P.EVENTS)
            assert msg["sub"] == sub
            seen.extend(msg["events"])
            nxt = msg["next"]
            await cl.send(P.ACK, sub=sub, upto=msg["next"])
    return nxt


@pytest.mark.parametrize("subprotocol", [P.SUBPROTOCOL_MSGPACK, P.SUBPROTOCOL_JSON])
async def test_welcome_ping_pong(srv, subprotocol):
    cl = await NativeClient.connect(srv.ws_url, srv.token(), subprotocol=subprotocol)
    assert cl.ws.subprotocol == subprotocol
    w = await cl.expect(P.WELCOME)
    assert (w["tenant"], w["user"]) == ("acme", "alice")
    assert w["session"] and w["heartbeat_s"] == 30.0
    await cl.send(P.PING, id=7)
    pong = await cl.expect(P.PONG)
    assert pong["id"] == 7 and pong["time_us"] > 0
    await cl.close()


async def test_resume_after_disconnect_gives_every_event_once_in_order(srv):
    append(srv, "feed/1", 30)
    append(srv, "other/1", 5)  # filtered out
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.SUB, id="s", prefixes=["feed/"], after=0)
    seen: list = []
    await collect(cl, "s", 30, seen)
    last = seen[-1]["position"]
    append(srv, "feed/1", 10, start=30)  # live
    await collect(cl, "s", 40, seen)
    last = seen[-1]["position"]
    await cl.ws.close()  # disconnect in the middle of the stream
    append(srv, "feed/1", 25, start=40)  # missed while away
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.SUB, id="s", prefixes=["feed/"], after=last)
    await collect(cl, "s", 65, seen)
    append(srv, "feed/1", 5, start=65)
    await collect(cl, "s", 70, seen)
    assert [e["data"]["i"] for e in seen] == list(range(70))
    positions = [e["position"] for e in seen]
    assert positions == sorted(set(positions))
    assert all(e["stream"] == "feed/1" for e in seen)
    await cl.close()


async def test_hello_resume_positions_and_ack_window(gateway):
    srv = gateway(event_batch_max=5, unacked_batches_max=2)
    append(srv, "feed/1", 20)
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.HELLO, client="phone", resume={"s": 10})
    await cl.send(P.SUB, id="s", prefixes=["feed/"])
    b1 = await cl.expect(P.EVENTS)
    b2 = await cl.expect(P.EVENTS)
    assert [e["data"]["i"] for e in b1["events"] + b2["events"]] == list(range(10, 20))
    # window of 2 unacked batches: nothing more until an ack
    append(srv, "feed/1", 3, start=20)
    with pytest.raises(TimeoutError):
        await cl.expect(P.EVENTS, timeout=0.5)
    await cl.send(P.ACK, sub="s", upto=b2["next"])
    b3 = await cl.expect(P.EVENTS)
    assert [e["data"]["i"] for e in b3["events"]] == [20, 21, 22]
    await cl.close()


async def test_too_far_behind_is_told_to_refresh(gateway):
    srv = gateway(max_behind=10)
    append(srv, "feed/1", 15)
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.SUB, id="s", prefixes=["feed/"], after=0)
    msg = await cl.expect(P.REFRESH)
    assert msg["reason"] == "too_far_behind" and msg["head"] == 15
    # a client that resumes close enough is served normally
    await cl.send(P.SUB, id="s2", prefixes=["feed/"], after=8)
    seen: list = []
    await collect(cl, "s2", 7, seen)
    assert [e["data"]["i"] for e in seen] == list(range(8, 15))
    # and a snapshot is there to refresh from
    await cl.send(P.SNAP, id="snap1", prefixes=["feed/"])
    chunk = await cl.expect(P.SNAPSHOT)
    assert chunk["total"] >= 1 and chunk["position"] == 15 and len(chunk["checksum"]) == 64
    await cl.close()


async def test_heartbeat_timeout_closes_stale_connection(gateway):
    # The session's time is a clock moved by hand: a minute of gateway time passes without
    # sleeping (the real-time ticker runs every 0.1 s: ack_timeout_s / 2), and only the hand
    # clock can make the connection stale within the test's few real seconds.
    clock = HandClock()
    srv = gateway(stale_after_s=60, ack_timeout_s=0.2, clock=clock)
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    # pings keep it alive past the stale timeout (2 minutes of gateway time in all)...
    for _ in range(4):
        clock.advance(30)
        await cl.send(P.PING)
        await cl.expect(P.PONG)
    # ...silence closes it
    clock.advance(61)
    code, seen = await cl.closed(timeout=5)
    assert code == 4408
    assert seen[-1]["t"] == P.BYE and seen[-1]["code"] == "stale"


async def test_rate_limit_warns_then_disconnects_then_refuses_for_a_while(gateway):
    srv = gateway(rate_limit_messages=5, rate_limit_window_s=60, rate_limit_ban_s=30)
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    for i in range(20):  # protocol upkeep (pings) never counts against the limit
        await cl.send(P.PING, id=i)
        assert (await cl.expect(P.PONG))["id"] == i
    for i in range(5):  # application messages do
        await cl.send(P.LEAVE, room=f"r{i}")
        assert (await cl.expect(P.LEFT))["room"] == f"r{i}"
    await cl.send(P.LEAVE, room="r99")
    warn = await cl.expect(P.WARN)
    assert warn["code"] == "rate_limited" and warn["retry_after_s"] > 0
    await cl.send(P.LEAVE, room="r100")
    code, seen = await cl.closed()
    assert code == 4429
    assert seen[-1]["t"] == P.BYE and seen[-1]["code"] == "rate_limited"
    # temporary disconnect: a reconnect within the ban is refused with 4429
    cl2 = await NativeClient.connect(srv.ws_url, srv.token())
    code, _ = await cl2.closed()
    assert code == 4429
    # other users are not affected
    cl3 = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    await cl3.expect(P.WELCOME)
    await cl3.close()


async def test_graceful_shutdown_sends_bye_and_closes_1001(srv):
    append(srv, "feed/1", 3)
    clients = []
    for user in ("alice", "bob"):
        cl = await NativeClient.connect(srv.ws_url, srv.token(user=user))
        await cl.expect(P.WELCOME)
        await cl.send(P.SUB, id="s", prefixes=["feed/"], after=0)
        clients.append(cl)
    stopper = asyncio.get_running_loop().run_in_executor(None, srv.stop)
    for cl in clients:
        code, seen = await cl.closed(timeout=10)
        assert code == 1001
        kinds = [m["t"] for m in seen]
        assert kinds[-1] == P.BYE and seen[-1]["code"] == "shutdown" and seen[-1]["reason"]
        # everything queued before the shutdown was delivered first
        events = [e for m in seen if m["t"] == P.EVENTS for e in m["events"]]
        assert [e["data"]["i"] for e in events] == [0, 1, 2]
    await stopper


async def test_rooms_say_dm_presence_and_membership_survives_reconnect(srv):
    a = await NativeClient.connect(srv.ws_url, srv.token(user="alice"), query="client=laptop")
    b = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    b2 = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))  # bob's second device
    for c in (a, b, b2):
        await c.expect(P.WELCOME)
    await a.send(P.JOIN, room="lobby")
    joined = await a.expect(P.JOINED)
    assert joined["room"] == "lobby" and joined["members"][0]["user"] == "alice"
    await b.send(P.JOIN, room="lobby")
    await b.expect(P.JOINED)
    # b's join is announced to a
    ann = await a.expect(P.PRESENCE, skip=())
    assert ann["event"] == "joined" and ann["user"] == "bob"
    # broadcast to the room (not echoed to the sender)
    await a.send(P.SAY, room="lobby", data={"text": "hi"}, id="s1")
    sent = await a.expect(P.SENT)
    assert sent["id"] == "s1" and sent["pos"] > 0 and sent["duplicate"] is False
    msg = await b.expect(P.MSG)
    assert msg["from"] == "alice" and msg["room"] == "lobby" and msg["data"] == {"text": "hi"}
    assert msg["pos"] == sent["pos"]
    # direct message reaches every connection of the user, once each
    await a.send(P.DM, to="bob", data="psst", id="d1")
    dm_pos = (await a.expect(P.SENT))["pos"]
    for c in (b, b2):
        dm = await c.expect(P.MSG)
        assert dm["direct"] is True and dm["from"] == "alice" and dm["data"] == "psst" and dm["pos"] == dm_pos
    # the same id again is stored once and not delivered again
    await a.send(P.DM, to="bob", data="psst", id="d1")
    again = await a.expect(P.SENT)
    assert again["pos"] == dm_pos and again["duplicate"] is True
    # ephemeral presence (typing) goes to the room and shows in the REST view
    await b.send(P.PRESENCE, room="lobby", state={"typing": True})
    pres = await a.expect(P.PRESENCE, skip=())
    assert pres["user"] == "bob" and pres["state"] == {"typing": True}
    view = httpx.get(f"{srv.url}/v1/rooms/lobby/presence", headers=srv.headers()).json()
    assert {m["user"] for m in view["members"]} == {"alice", "bob"}
    assert view["states"][0]["state"] == {"typing": True}
    # alice reconnects with the same client id: still a member, messages still arrive
    await a.ws.close()
    a = await NativeClient.connect(srv.ws_url, srv.token(user="alice"), query="client=laptop")
    w = await a.expect(P.WELCOME)
    assert w["rooms"] == ["lobby"]
    await b.send(P.SAY, room="lobby", data="again")
    assert (await a.expect(P.MSG))["data"] == "again"
    # join/leave and the messages are in the log
    await a.send(P.LEAVE, room="lobby")
    await a.expect(P.LEFT)
    log = httpx.get(f"{srv.url}/v1/streams/room/lobby", headers=srv.headers()).json()["events"]
    assert [(e["type"], e["data"].get("user") or e["data"]["from"]) for e in log] == [
        ("presence.joined", "alice"), ("presence.joined", "bob"), ("room.message", "alice"),
        ("room.message", "bob"), ("presence.left", "alice")]
    # bob's inbox holds the direct message once; alice cannot read it
    inbox = httpx.get(f"{srv.url}/v1/streams/dm/bob", headers=srv.headers(user="bob")).json()["events"]
    assert [(e["type"], e["data"]["data"]) for e in inbox] == [("dm.message", "psst")]
    r = httpx.get(f"{srv.url}/v1/streams/dm/bob", headers=srv.headers(user="alice"))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    everything = httpx.get(f"{srv.url}/v1/log", headers=srv.headers(user="alice")).json()["events"]
    assert everything and not any(e["stream"].startswith("dm/") for e in everything)
    for c in (a, b, b2):
        await c.close()


async def test_presence_state_expires_after_ttl(gateway):
    srv = gateway(presence_ttl_s=0.3)
    a = await NativeClient.connect(srv.ws_url, srv.token(user="alice"))
    b = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    for c in (a, b):
        await c.expect(P.WELCOME)
        await c.send(P.JOIN, room="r")
        await c.expect(P.JOINED)
    await b.send(P.PRESENCE, room="r", state={"cursor": 5})
    while True:
        m = await a.expect(P.PRESENCE, skip=())
        if m.get("state") == {"cursor": 5}:
            break
    gone = await a.expect(P.PRESENCE, skip=(), timeout=3)
    assert gone["user"] == "bob" and gone["state"] is None
    for c in (a, b):
        await c.close()


async def test_commands_refused_over_websocket_and_ops_acked(srv):
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send(P.COMMAND, type="order.placed")
    err = await cl.expect(P.ERROR)
    assert err["code"] == "websocket_forbidden"
    op = {"kind": "op", "op": "op-1", "client": "c1", "user": "alice", "stream": "rec/notes/1",
          "vc": {"c1": 1}, "hlc": _hlc(), "set": {"title": "hello"}, "delete": [], "base": 0}
    await cl.send(P.OPS, id="b1", ops=[op])
    acks = await cl.expect(P.OPACKS)
    assert acks["id"] == "b1" and acks["results"][0]["op"] == "op-1"
    assert acks["results"][0]["kind"] == "applied", acks
    await cl.send(P.OPS, id="b2", ops=[op])  # resubmitted: same outcome, nothing written twice
    again = await cl.expect(P.OPACKS)
    assert again["results"][0]["kind"] == "duplicate"
    rec = httpx.get(f"{srv.url}/v1/records/notes/1", headers=srv.headers()).json()
    assert rec["values"] == {"title": "hello"}
    await cl.close()


async def test_protocol_errors_close_4400(srv):
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send_raw(b"\xc1\xff not msgpack")
    code, seen = await cl.closed()
    assert code == 4400 and seen[-1]["t"] == P.ERROR
    cl = await NativeClient.connect(srv.ws_url, srv.token())
    await cl.expect(P.WELCOME)
    await cl.send("bogus")
    code, _ = await cl.closed()
    assert code == 4400


def _hlc() -> str:
    import time

    from syncline.engine.clocks import HLCTimestamp
    return HLCTimestamp(int(time.time() * 1000), 0, "c1").encode()
