"""``error {ref: <sub id>}``: the server ended our subscription (docs/protocol.md, Errors).

The core subscribes again from its last applied position: after a backoff on the same
connection if it stays open, else on the next connection (``welcome``)."""
from __future__ import annotations

import random

from ck_memory import core_server

from syncline.clientkit.core import Connect, ServerError, SessionCore, State, StateChanged
from syncline.clientkit.transports.memory import MemoryLink
from syncline.engine import protocol as P

SUB_FAILED = P.message(P.ERROR, code="internal", message="the subscription failed", ref="main")


def online(user: str, **kw) -> SessionCore:
    core = SessionCore(user=user, client_id=f"c-{user}", rng=random.Random(user), **kw)
    core.connect(0)
    core.connected(0)
    core.receive({"t": "welcome", "session": "s", "head": 0}, 0)
    assert core.state is State.ONLINE
    return core


def subs(outputs) -> list[dict]:
    return [o.msg for o in outputs if getattr(o, "msg", {}).get("t") == P.SUB]


def events(core: SessionCore, pos: int, now: int) -> None:
    core.receive({"t": "events", "sub": "main", "next": pos, "head": pos,
                  "events": [{"position": pos, "type": "feed.posted", "stream": "feed/x", "data": {}}]}, now)


def test_a_failed_subscription_resumes_on_the_same_connection():
    srv = core_server()
    alice, bob = (SessionCore(user=u, client_id=f"c-{u}", rng=random.Random(u)) for u in ("alice", "bob"))
    la, lb = MemoryLink(alice, srv, wire=True), MemoryLink(bob, srv, wire=True)
    la.run(0)
    lb.run(0)
    la.do(alice.set("rec/notes/1", {"v": 1}, 10), 10)
    lb.run(10)
    assert bob.get("rec/notes/1") == {"v": 1} and bob.position == 1

    conn = lb.conn
    # The server's reads failed: it ended the subscription (here as the core does on ``unsub``)...
    assert srv.receive(conn, P.message(P.UNSUB, id="main"), 20) == []
    lb.deliver(SUB_FAILED)  # ...said so, and (this time) kept the connection
    lb.run(20)
    assert any(type(o) is ServerError for o in lb.outputs)
    la.do(alice.set("rec/notes/1", {"v": 2}, 30), 30)
    lb.run(30)
    assert bob.get("rec/notes/1") == {"v": 1}  # nothing arrives without a subscription

    lb.run(30 + bob.backoff_base_ms)
    assert bob.get("rec/notes/1") == {"v": 2} and bob.position == 2
    assert lb.conn == conn and bob.state is State.ONLINE
    changes = [(o.old, o.new) for o in lb.outputs if type(o) is StateChanged]
    assert changes == [(State.OFFLINE, State.CONNECTING), (State.CONNECTING, State.ONLINE)]  # no reconnect


def test_the_resubscription_starts_at_the_last_applied_position_after_a_backoff():
    core = online("u", backoff_base_ms=250)
    events(core, 7, 50)
    core.receive(SUB_FAILED, 100)
    assert core.next_deadline() == 350
    assert subs(core.tick(349)) == []
    assert subs(core.tick(350)) == [P.message(P.SUB, id="main", prefixes=["rec/"], after=7)]
    assert subs(core.tick(10_000)) == []  # once
    assert core.next_deadline() != 350


def test_a_subscription_that_keeps_failing_backs_off_until_events_flow_again():
    core = online("u", backoff_base_ms=100, backoff_max_ms=350)
    delays = []
    now = 0
    for _ in range(4):
        core.receive(SUB_FAILED, now)
        delays.append(core.next_deadline() - now)
        now = core.next_deadline()
        assert subs(core.tick(now))
    assert delays == [100, 200, 350, 350]
    events(core, 1, now)  # the subscription delivers: the next failure retries soon again
    core.receive(SUB_FAILED, now)
    assert core.next_deadline() - now == 100


def test_when_the_server_closes_the_connection_the_next_welcome_resubscribes_once():
    core = online("u")
    events(core, 4, 10)
    core.receive(SUB_FAILED, 20)
    core.disconnected(21, "1011")  # the usual case: the server closes right after the error
    retry = core.next_deadline()
    out = core.tick(retry)
    assert any(type(o) is Connect for o in out) and core.state is State.CONNECTING
    core.connected(retry)
    out = core.receive({"t": "welcome", "session": "s2", "head": 4}, retry)
    assert subs(out) == [P.message(P.SUB, id="main", prefixes=["rec/"], after=4)]
    assert subs(core.tick(retry + 60_000)) == []  # the mark went with the old connection


def test_errors_for_other_requests_do_not_touch_the_subscription():
    core = online("u")
    deadline = core.next_deadline()
    for ref in ("b1", "lobby", None):
        out = core.receive(P.message(P.ERROR, code="forbidden", message="no", **({"ref": ref} if ref else {})), 5)
        assert [type(o) for o in out] == [ServerError]
    assert core.next_deadline() == deadline
    offline = SessionCore(user="v", rng=random.Random(2))
    offline.receive(SUB_FAILED, 5)  # a late frame after the connection went away: harmless
    assert offline.state is State.OFFLINE and subs(offline.tick(10**6)) == []
