"""The access rule (engine/access.py) on its own, and in the native protocol's core
(engine/session.py) that the gateway and the simulator both run."""
from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.api.auth import ROLE_PERMS  # noqa: I001  (the roles table the docs promise)
from syncline.engine import access
from syncline.engine import protocol as P
from syncline.engine.access import ADMIN, READ, SYSTEM_READ, WRITE, parse_scopes
from syncline.engine.errors import Forbidden, ValidationError
from syncline.engine.events import Actor, RecordedEvent, Retention
from syncline.engine.session import ReadLog, Send, ServerSession, SessionConfig
from syncline.engine.sync_server import Principal, SyncServer


class Who:
    def __init__(self, user="u", perms=(READ, WRITE), scopes=None):
        self.user, self.perms = user, frozenset(perms)
        self.scopes = parse_scopes(scopes) if scopes is not None else None


segment = st.builds(lambda a, b: a + b, st.sampled_from("abcdxyz"),
                    st.text(alphabet="abcdxyz0123456789-._", max_size=5))
streams = st.one_of(
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(["doc", "room", "rec", "dm", "notes", "cmd"]), segment),
    st.builds(lambda a, b, c: f"{a}/{b}/{c}", st.sampled_from(["doc", "rec"]), segment, segment),
    st.sampled_from(["$audit", "$security", "$conflicts", "$dlq/billing", "dm/u", "dm/other", "doc/handbook-1"]),
)
patterns = st.one_of(
    st.just("*"),
    st.builds(lambda s, star: s + ("*" if star else ""), streams, st.booleans()),
    st.builds(lambda s: s.rsplit("/", 1)[0] + "/*", streams),
)
scope_lists = st.lists(st.builds(lambda a, p: f"{a}:{p}", st.sampled_from(["read", "write"]), patterns),
                       min_size=1, max_size=5)
perm_sets = st.sets(st.sampled_from([READ, WRITE, ADMIN, SYSTEM_READ]))


def oracle_read(user, perms, scopes, stream):
    """The rule as docs/security.md#access states it, written independently."""
    if stream.startswith("$") and SYSTEM_READ not in perms:
        return False
    if stream.startswith("dm/") and stream != f"dm/{user}" and ADMIN not in perms:
        return False
    if scopes is None:
        return True
    return any(fnmatch.fnmatchcase(stream, s.split(":", 1)[1]) for s in scopes)


def oracle_write(perms, scopes, stream):
    if WRITE not in perms or stream.startswith("$"):
        return False
    if scopes is None:
        return True
    return any(s.startswith("write:") and fnmatch.fnmatchcase(stream, s.split(":", 1)[1]) for s in scopes)


@given(perm_sets, st.one_of(st.none(), scope_lists), streams)
def test_the_rule_matches_its_statement(perms, scopes, stream):
    who = Who("u", perms, scopes)
    assert access.can_read(who, stream) == oracle_read("u", perms, scopes, stream)
    assert access.can_write(who, stream) == oracle_write(perms, scopes, stream)
    if access.can_write(who, stream) and READ in perms:
        assert access.can_read(who, stream) or stream.startswith("dm/")  # write implies read (inboxes aside)


@given(perm_sets, st.one_of(st.none(), scope_lists), st.lists(streams, max_size=30))
def test_visible_keeps_exactly_the_readable_events(perms, scopes, names):
    who = Who("u", perms, scopes)
    events = [_event(s, i + 1) for i, s in enumerate(names)]
    shown = access.visible(who, events)
    assert [e.stream for e in shown] == [s for s in names if oracle_read("u", perms, scopes, s)]
    assert access.hidden_count(who, events) == len(events) - len(shown)
    if access.reads_everything(who):
        assert shown is events


@given(perm_sets, st.one_of(st.none(), scope_lists), st.lists(streams, max_size=5),
       st.lists(st.sampled_from(["", "doc/", "$", "$dlq/", "room/"]), max_size=3))
def test_a_selection_is_refused_exactly_when_it_names_what_may_not_be_read(perms, scopes, names, prefixes):
    who = Who("u", perms, scopes)
    refused = any(not oracle_read("u", perms, scopes, s) for s in names) or (
        SYSTEM_READ not in perms and any(p.startswith("$") for p in prefixes))
    if refused:
        with pytest.raises(Forbidden):
            access.check_selection(who, names, prefixes)
    else:
        access.check_selection(who, names, prefixes)


@pytest.mark.parametrize("raw", [
    "read:*", [], [""], ["read"], ["admin:doc/x"], ["read:"], ["read:Doc/x"], ["read:doc//x"], [None],
    ["read:doc/x y"], ["read:doc/\n"], ["read:" + "a" * 300], [f"read:doc/{i}" for i in range(65)], {"read": "x"},
])
def test_malformed_scopes_are_refused(raw):
    with pytest.raises(ValidationError):
        parse_scopes(raw)


def test_scopes_parse_and_are_shared():
    a = parse_scopes(["write:room/support", "read:doc/handbook/*", "write:room/support"])
    b = parse_scopes(["read:doc/handbook/*", "write:room/support"])
    assert a is b and sorted(a.wire()) == ["read:doc/handbook/*", "write:room/support"]
    assert parse_scopes(None) is None
    assert a.allows("doc/handbook/intro") and a.allows("doc/handbook/a/b") and not a.allows("doc/handbook")
    assert not a.allows("doc/handbook/x", WRITE) and a.allows("room/support", WRITE)
    assert not a.allows("room/support2") and not a.allows("room/support/x")


def test_roles_table():
    assert ROLE_PERMS["auditor"] == {READ, SYSTEM_READ}
    assert SYSTEM_READ in ROLE_PERMS["admin"] and SYSTEM_READ in ROLE_PERMS["super-admin"]
    for role in ("viewer", "reader", "read-only", "member", "writer", "editor", "service"):
        assert SYSTEM_READ not in ROLE_PERMS[role], role


# ------------------------------------------------------------------ the session core


def _event(stream: str, pos: int) -> RecordedEvent:
    return RecordedEvent(id=f"e{pos}", tenant="acme", stream=stream, version=1, position=pos, type="x.y", schema=1,
                         time_us=0, actor=Actor("someone"), clock={}, data=None, meta={},
                         retention=Retention.STANDARD)


def _session(perms, scopes=None, user="u"):
    who = access_identity(user, perms, scopes)
    s = ServerSession(who, SessionConfig(), session_id="s1", now_ms=0)
    return s


def access_identity(user, perms, scopes):
    from syncline.engine.session import Identity

    return Identity("acme", user, frozenset(perms), parse_scopes(scopes) if scopes is not None else None)


@given(perm_sets.map(lambda p: p | {READ}), st.one_of(st.none(), scope_lists),
       st.sampled_from([{}, {"types": ["*"]}, {"types": ["x.*"]}, {"prefixes": ["d", "r", "$"]}]),
       st.lists(streams, min_size=1, max_size=20))
def test_a_subscription_delivers_only_readable_events_whatever_its_filter(perms, scopes, sub, names):
    s = _session(perms, scopes)
    out = s.receive({"t": P.SUB, "id": "a", "after": 0, **sub}, 0)
    if any(isinstance(e, Send) and e.msg.get("t") == P.ERROR for e in out):
        assert SYSTEM_READ not in perms and "$" in sub.get("prefixes", ())
        return
    # (the shell answers CountBehind, then ReadLog; feed the page straight in)
    out = s.behind_counted("a", s.subs["a"].gen, False, 100, 0)
    assert any(isinstance(e, ReadLog) for e in out)
    events = [_event(n, i + 1) for i, n in enumerate(names)]
    out = s.log_read("a", s.subs["a"].gen, events, len(events), len(events), 0)
    sent = [e.msg for e in out if isinstance(e, Send) and e.msg["t"] == P.EVENTS]
    got = [ev["stream"] for m in sent for ev in m["events"]]
    assert got == [n for n in names if oracle_read("u", perms, scopes, n)]
    assert s.stats["events_hidden"] == len(names) - len(got)


def test_session_refuses_what_scopes_do_not_allow():
    s = _session({READ, WRITE}, ["read:doc/handbook*", "write:room/support"])
    def answer(msg):
        return [e.msg for e in s.receive(msg, 0) if isinstance(e, Send)]

    assert answer({"t": P.SUB, "id": "a", "streams": ["doc/secret"]})[0]["code"] == "out_of_scope"
    assert answer({"t": P.SUB, "id": "a", "streams": ["$audit"]})[0]["code"] == "system_stream_forbidden"
    assert answer({"t": P.JOIN, "room": "sales"})[0]["code"] == "out_of_scope"
    assert answer({"t": P.DM, "to": "x", "data": 1})[0]["code"] == "out_of_scope"
    assert answer({"t": P.SNAP, "id": "n", "streams": ["doc/secret"]})[0]["code"] == "out_of_scope"
    s.receive({"t": P.JOIN, "room": "support"}, 0)
    assert not answer({"t": P.SAY, "room": "support", "data": 1, "id": "m"})  # (a StoreMessage, no error)
    acks = answer({"t": P.OPS, "id": "o", "ops": [
        {"kind": "doc", "op": "d1", "stream": "doc/handbook-1", "update": b"\x00\x00"}]})
    assert acks[0]["results"][0]["reason"] == "out_of_scope"
    assert s.admits({"t": P.MSG, "room": "support"}) and not s.admits({"t": P.MSG, "direct": True})


def test_the_simulator_runs_the_same_rule():
    """engine/sync_server.py: a scoped principal's subscription leaves out-of-scope events
    out, and its snapshot too."""
    from syncline.engine.records import CollectionPolicy, ResolutionConfig
    from syncline.engine.sync_server import ServerConfig
    from syncline.store.memory_sync_log import MemorySyncLog

    server = SyncServer(MemorySyncLog(), ResolutionConfig({}, default_collection=CollectionPolicy()), ServerConfig())
    writer, _ = server.connect(Principal("acme", "w"), 0)
    reader, out = server.connect(Principal("acme", "r", scopes=parse_scopes(["read:room/a"])), 0)
    viewer, _ = server.connect(Principal("acme", "v", perms=frozenset({READ})), 0)
    for room in ("a", "b"):
        server.receive(writer, {"t": P.JOIN, "room": room}, 1)
        server.receive(writer, {"t": P.SAY, "room": room, "data": {"n": room}, "id": f"m{room}"}, 2)
    out = server.receive(reader, {"t": P.SUB, "id": "s", "after": 0, "types": ["*"]}, 3)
    streams = {e["stream"] for cid, m in out if cid == reader and m["t"] == P.EVENTS for e in m["events"]}
    assert streams == {"room/a"}
    out = server.receive(reader, {"t": P.JOIN, "room": "b"}, 4)
    assert [m["code"] for cid, m in out if cid == reader and m["t"] == P.ERROR] == ["out_of_scope"]
    out = server.receive(viewer, {"t": P.SUB, "id": "s", "after": 0, "streams": ["$audit"]}, 5)
    assert [m["code"] for cid, m in out if cid == viewer and m["t"] == P.ERROR] == ["system_stream_forbidden"]
