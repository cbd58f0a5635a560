"""Issue 15, item 5, in the pure core (engine/session.py) and the simulator shell
(engine/sync_server.py): a session ends at its token's expiry (4401 token_expired) unless
an in-band ``auth`` moves it; a token of another user or tenant is refused with a typed
error; a revoked session ends with 4401 token_revoked."""
from __future__ import annotations

from syncline.engine import protocol as P
from syncline.engine.errors import SynclineError
from syncline.engine.events import NewEvent, StreamWrite
from syncline.engine.records import LWW, CollectionPolicy, ResolutionConfig
from syncline.engine.session import Close, Identity, Send, ServerSession, SessionConfig, VerifyToken
from syncline.engine.sync_server import Principal, ServerConfig, SyncServer
from syncline.store.memory_sync_log import MemorySyncLog

WHO = Identity("acme", "alice")


def _session(expires_ms: int | None = 10_000) -> ServerSession:
    s = ServerSession(WHO, SessionConfig(), session_id="c1", now_ms=0, expires_ms=expires_ms)
    s.welcome(head=0)
    return s


def _closes(effects: list) -> list[Close]:
    return [e for e in effects if isinstance(e, Close)]


def test_the_deadline_is_the_expiry_and_tick_closes_there():
    s = _session(10_000)
    assert s.next_deadline() == 10_000
    assert s.tick(9_999) == []
    out = s.tick(10_000)
    assert _closes(out) == [Close(P.CLOSE_UNAUTHENTICATED, "token_expired")]
    assert [e.msg for e in out if isinstance(e, Send)][0]["code"] == "token_expired"
    assert s.closed and s.next_deadline() is None


def test_a_message_after_expiry_is_not_handled():
    s = _session(10_000)
    out = s.receive({"t": "ops", "id": "b1", "ops": [{"op": "o1"}]}, 10_001)
    assert _closes(out) == [Close(P.CLOSE_UNAUTHENTICATED, "token_expired")]
    assert not [e for e in out if type(e).__name__ == "CommitOps"]


def test_events_read_after_expiry_are_not_sent():
    s = _session(10_000)
    s.receive({"t": "sub", "id": "s", "after": 0}, 1_000)
    s.behind_counted("s", s.subs["s"].gen, False, 5, 1_000)
    out = s.log_read("s", s.subs["s"].gen, [], 0, 5, 10_500)
    assert _closes(out) == [Close(P.CLOSE_UNAUTHENTICATED, "token_expired")]


def test_auth_moves_the_expiry_and_answers_authed():
    s = _session(10_000)
    out = s.receive({"t": "auth", "id": "r1", "token": "new.jwt.token"}, 5_000)
    assert out == [VerifyToken("r1", "new.jwt.token")]
    who = Identity("acme", "alice", frozenset({"read"}))
    out = s.reauthed("r1", who, 70_000, 5_001, exp=1234)
    assert [e.msg for e in out] == [{"t": "authed", "id": "r1", "exp": 1234}]
    assert s.who is who and s.expires_ms == 70_000 and s.next_deadline() == 70_000
    assert s.tick(10_000) == []  # the old expiry passed: still open
    assert _closes(s.tick(70_000))


def test_auth_for_another_user_or_tenant_is_refused_and_the_old_expiry_stays():
    s = _session(10_000)
    for other in (Identity("acme", "mallory"), Identity("globex", "alice")):
        out = s.reauthed("r", other, 99_000, 1_000)
        assert len(out) == 1 and out[0].msg["t"] == "error"
        assert out[0].msg["code"] == "token_subject_mismatch" and out[0].msg["ref"] == "r"
    assert s.who is WHO and s.expires_ms == 10_000 and not s.closed


def test_a_failed_verification_is_an_error_and_the_session_stays():
    s = _session(10_000)

    class Bad(SynclineError):
        code = "token_bad_signature"

    out = s.auth_failed("r", Bad("nope"))
    assert out[0].msg["code"] == "token_bad_signature" and not s.closed


def test_revoked_ends_the_session():
    s = _session(None)
    out = s.revoked()
    assert _closes(out) == [Close(P.CLOSE_UNAUTHENTICATED, "token_revoked")]
    assert s.revoked() == []


def test_auth_is_a_valid_client_message_and_authed_a_server_one():
    msg = P.decode_frame(P.encode_frame({"t": "auth", "token": "x" * 2000}), allowed=P.CLIENT_TYPES)
    assert msg["token"] == "x" * 2000
    P.decode_frame(P.encode_frame({"t": "authed", "exp": 5}), allowed=P.SERVER_TYPES)


# ------------------------------------------------------------------ the simulator shell


def _server(authenticate=None) -> SyncServer:
    return SyncServer(MemorySyncLog(), ResolutionConfig({"lww": CollectionPolicy(default=LWW)}), ServerConfig(),
                      authenticate=authenticate)


def test_the_simulator_closes_at_expiry_unless_refreshed():
    def authenticate(token: str, now_ms: int) -> Principal:
        user, _, exp = token.partition(":")
        return Principal("acme", user, expires_ms=int(exp))

    server = _server(authenticate)
    a, _ = server.connect(Principal("acme", "alice", expires_ms=10_000), 0)
    b, _ = server.connect(Principal("acme", "bob", expires_ms=10_000), 0)
    out = server.receive(a, {"t": "auth", "id": "r", "token": "alice:50000"}, 5_000)
    assert out == [(a, {"t": "authed", "id": "r", "exp": 50})]
    out = server.receive(b, {"t": "auth", "id": "r", "token": "mallory:50000"}, 5_000)
    assert out[0][1]["code"] == "token_subject_mismatch"
    out = server.tick(10_000)
    assert (b, {"t": "bye", "code": "token_expired", "reason": "the token has expired", "close": 4401}) in out
    assert server.connections() == [a]
    server.log.append("acme", [StreamWrite("x/1", (NewEvent("t.e", {}),))], 1)
    server.tick(49_999)
    assert server.connections() == [a]
    out = server.tick(50_000)
    assert [m["code"] for c, m in out if c == a and m["t"] == "bye"] == ["token_expired"]
    assert server.connections() == []


def test_the_simulator_without_authenticate_refuses_auth_and_revokes():
    server = _server()
    a, _ = server.connect(Principal("acme", "alice"), 0)
    out = server.receive(a, {"t": "auth", "token": "t"}, 1)
    assert out[0][1]["code"] == "auth_unsupported"
    out = server.revoke(a, 2)
    assert out[0][1]["code"] == "token_revoked" and out[0][1]["close"] == 4401
    assert server.connections() == []


def test_an_in_band_refresh_keeps_the_new_tokens_scopes():
    """A scoped token refreshed by another scoped token stays scoped: the refreshed session
    must not fall back to the whole tenant (an Identity without scopes)."""
    from syncline.engine.access import parse_scopes

    narrow = parse_scopes(["read:feed/a*"])

    def authenticate(token: str, now_ms: int) -> Principal:
        return Principal("acme", "alice", expires_ms=90_000, scopes=narrow)

    server = _server(authenticate)
    server.log.append("acme", [StreamWrite("feed/a1", (NewEvent("t.e", {"n": 1}),)),
                               StreamWrite("feed/b1", (NewEvent("t.e", {"n": 2}),))], 1)
    a, _ = server.connect(Principal("acme", "alice", expires_ms=10_000, scopes=narrow), 0)
    out = server.receive(a, {"t": "auth", "id": "r", "token": "refreshed"}, 5_000)
    assert out == [(a, {"t": "authed", "id": "r", "exp": 90})]
    out = server.receive(a, {"t": "sub", "id": "s", "after": 0}, 5_001)
    streams = [e["stream"] for _, m in out if m["t"] == "events" for e in m["events"]]
    assert streams == ["feed/a1"]  # feed/b1 stays out of reach after the refresh
