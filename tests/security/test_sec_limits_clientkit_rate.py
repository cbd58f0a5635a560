"""Issue 15, item 4: the rate limit counts application messages only, so the project's own
client kit writing 4 edits a second for 3 minutes is never warned nor disconnected.

The client kit's session core (``clientkit.core.SessionCore``) runs against the production
protocol core (``engine.session.ServerSession`` inside ``engine.sync_server``, through
``clientkit.transports.core_server.CoreServer`` and the real codec), on a simulated clock:
3 minutes take well under a second. Before the fix every ``ack`` (one per event batch the
client receives) counted toward the 100 messages/min limit: 4 writes/s sent 4 ``ops`` and
about 4 ``ack``s a second, and the client was warned, then closed with 4429 within a minute.
"""
from __future__ import annotations

import random

from syncline.clientkit.core import SessionCore, State
from syncline.clientkit.transports.core_server import CoreServer, open_config
from syncline.clientkit.transports.memory import MemoryLink
from syncline.engine import protocol as P
from syncline.engine.ratelimit import DEFAULT_RATE_LIMIT_MESSAGES, UNCOUNTED
from syncline.engine.session import Identity, ServerSession, SessionConfig
from syncline.engine.sync_server import ServerConfig
from syncline.store.memory_sync_log import MemorySyncLog

WRITES_PER_S = 4
SIMULATED_S = 180
STEP_MS = 1000 // WRITES_PER_S


class Watched:
    """A FrameServer that records what the server says about limits (warn, bye)."""

    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.limited: list[dict] = []
        self.app_messages = 0
        self.upkeep_messages = 0

    def _watch(self, out):
        for _, msg in out:
            if msg.get("t") in (P.WARN, P.BYE):
                self.limited.append(msg)
        return out

    def open(self, conn, *, user, client, now_ms):
        return self._watch(self.server.open(conn, user=user, client=client, now_ms=now_ms))

    def receive(self, conn, msg, now_ms):
        if msg.get("t") in UNCOUNTED:
            self.upkeep_messages += 1
        else:
            self.app_messages += 1
        return self._watch(self.server.receive(conn, msg, now_ms))

    def close(self, conn, now_ms):
        return self._watch(self.server.close(conn, now_ms))

    def tick(self, now_ms):
        return self._watch(self.server.tick(now_ms))


def run_writers(limit: int, writers: int = 2) -> Watched:
    srv = Watched(CoreServer(MemorySyncLog(), open_config(), config=ServerConfig(rate_limit_messages=limit)))
    links = []
    for i in range(writers):
        core = SessionCore(user=f"u{i}", client_id=f"c{i}", config=open_config(), rng=random.Random(i))
        link = MemoryLink(core, srv, wire=True)
        link.do(core.connect(0), 0)
        links.append(link)
    for link in links:
        link.run(0)
        assert link.core.state is State.ONLINE
    now, n = 0, 0
    while now < SIMULATED_S * 1000:
        now += STEP_MS
        for i, link in enumerate(links):
            n += 1
            link.do(link.core.set(f"rec/notes/n{n % 50}", {"title": f"edit {n}", "by": i}, now), now)
        for link in links:
            link.run(now)
            assert link.core.state is State.ONLINE, (now, srv.limited)
    for link in links:
        link.run(now)
        assert len(link.core.queue) == 0  # every write was acknowledged
    return srv


def test_client_kit_writing_4_per_second_for_3_simulated_minutes_is_never_limited():
    srv = run_writers(DEFAULT_RATE_LIMIT_MESSAGES)
    assert srv.limited == []
    assert srv.app_messages >= 2 * WRITES_PER_S * SIMULATED_S  # every write went out as an ops message
    assert srv.upkeep_messages >= srv.app_messages  # and the acks it took were as many, or more


def test_acks_pings_and_hello_do_not_count_only_application_messages_do():
    # A limit of 300/min: 4 writes/s are 240 application messages a minute, under it; with
    # the acks counted (about as many again) they would be 480, and the client would be cut.
    srv = run_writers(300)
    assert srv.limited == []
    assert srv.upkeep_messages * 60 / SIMULATED_S / 2 > 300 - 240  # the acks alone would have broken it


def test_the_session_counts_application_messages():
    s = ServerSession(Identity("acme", "alice"), SessionConfig(rate_limit_messages=5), session_id="s", now_ms=0)
    for i in range(1000):  # upkeep, however much
        out = s.receive({"t": P.PING, "id": i}, 1)
        assert [e.msg["t"] for e in out] == [P.PONG]
        assert s.receive({"t": P.ACK, "sub": "x", "upto": i}, 1) == []
        s.receive({"t": P.HELLO, "client": "c1", "resume": {"a": i}}, 1)
    for i in range(5):
        assert s.receive({"t": P.LEAVE, "room": f"r{i}"}, 2)[-1].msg["t"] == P.LEFT
    out = s.receive({"t": P.LEAVE, "room": "r9"}, 3)
    assert out[0].msg["t"] == P.WARN and out[0].msg["code"] == "rate_limited"
    out = s.receive({"t": P.LEAVE, "room": "r10"}, 4)
    assert [type(e).__name__ for e in out] == ["Ban", "Send", "Close"] and out[-1].code == P.CLOSE_RATE_LIMITED
