"""The session core against the server's protocol core (``CoreServer`` over ``engine.sync_server``:
the gateway's ``engine.session``, in memory), through the in-memory transport and the real codec."""
from __future__ import annotations

import random

from ck_memory import core_server
from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.clientkit.core import (
    TRANSITIONS,
    ConflictFound,
    OpResult,
    RoomMessage,
    SessionCore,
    SnapshotCorrupt,
    State,
)
from syncline.clientkit.queue import MemoryOpQueue
from syncline.clientkit.transports.core_server import open_config
from syncline.clientkit.transports.memory import MemoryLink
from syncline.engine.records import MANUAL, CollectionPolicy, merged

CFG = open_config(notes=CollectionPolicy(fields={"title": MANUAL, "likes": merged("counter")}))


def pair(server, *users):
    out = []
    for u in users:
        core = SessionCore(user=u, client_id=f"c-{u}", config=CFG, rng=random.Random(u))
        out.append((core, MemoryLink(core, server, wire=True)))
    return out


def settle(links, now, rounds=50):
    for _ in range(rounds):
        moved = sum(link.run(now) for link in links)
        if not moved and all(link.core.state is State.ONLINE or not link.up for link in links):
            return
        now += 1000
    return now


def test_transition_table_covers_every_state():
    sources = {s for s, _ in TRANSITIONS}
    assert sources == set(State)
    assert all(new in State for new in TRANSITIONS.values())


def test_backoff_grows_with_jitter_and_resets_on_welcome():
    core = SessionCore(user="u", rng=random.Random(1))
    delays, now = [], 0
    for _ in range(6):
        core.connect(now)
        core.disconnected(now)
        delays.append(core.next_deadline() - now)
        now = core.next_deadline()
    assert delays == sorted(delays) and delays[-1] <= core.backoff_max_ms
    assert core.status == "reconnecting…"


def test_offline_ops_are_readable_and_sent_in_order_once():
    srv = core_server(CFG)
    (a, la), = pair(srv, "alice")
    la.up = False
    la.run(0)
    for i in range(1000):
        a.set(f"rec/notes/{i % 7}", {"body": i, "likes": 1}, 10 + i)
    assert a.state is State.OFFLINE and len(a.queue) == 1000
    assert a.get("rec/notes/3")["likes"] == sum(1 for i in range(1000) if i % 7 == 3)
    la.up = True
    settle([la], 20_000)
    assert len(a.queue) == 0
    events = [e for e in srv.events() if e.type == "record.patched"]
    ops = [e.data["op"] for e in events]
    assert sorted(ops) == sorted(f"{a.client_id}.{n}" for n in range(1, 1001))  # once each
    # In order per record (the log groups one batch's events by record: docs/clientkit.md, Limits).
    for i in range(7):
        seqs = [int(e.data["op"].rsplit(".", 1)[1]) for e in events if e.stream == f"rec/notes/{i}"]
        assert seqs == list(range(i + 1, 1001, 7))
    assert a.replica.confirmed_values() == {s: r.values() for s, r in sorted(srv.records.records.items())}


def test_lost_opacks_after_commit_resubmits_without_duplicates():
    srv = core_server(CFG)
    (a, la), = pair(srv, "alice")
    la.run(0)
    srv.lose_opacks = 1
    outs = a.set("rec/notes/1", {"likes": 1}, 1)
    la.do(outs, 1)
    assert len(a.queue) == 1  # committed on the server, the answer was lost
    la.drop(2)
    settle([la], 100_000)
    assert len(a.queue) == 0
    kinds = [o.kind for o in la.outputs if type(o) is OpResult]
    assert kinds == ["duplicate"]
    assert sum(1 for e in srv.events() if e.type == "record.patched") == 1
    assert a.get("rec/notes/1") == {"likes": 1}


def test_corrupted_snapshot_is_refused_and_fetched_again():
    srv = core_server(CFG, max_behind_events=5)
    (w, lw), (r, lr) = pair(srv, "writer", "reader")
    lw.run(0)
    for i in range(20):
        lw.do(w.set(f"rec/notes/{i}", {"body": i, "likes": 2}, i + 1), i + 1)
    srv.corrupt_snapshots = 1
    lr.run(100)
    corrupt = [o for o in lr.outputs if type(o) is SnapshotCorrupt]
    assert len(corrupt) == 1
    assert r.state is State.ONLINE and r.position == srv.head
    assert r.replica.confirmed_values() == w.replica.confirmed_values()
    # later events fold on top of the snapshot (counter keeps its value)
    lw.do(w.set("rec/notes/3", {"likes": 1}, 200), 200)
    lr.run(201)
    assert r.get("rec/notes/3") == {"body": 3, "likes": 3}


def test_refresh_can_drop_unsynced_local_ops():
    srv = core_server(CFG, max_behind_events=5)
    (w, lw), = pair(srv, "writer")
    lw.run(0)
    for i in range(10):
        lw.do(w.set(f"rec/notes/{i}", {"body": i}, i + 1), i + 1)
    r = SessionCore(user="reader", client_id="c-r", config=CFG, keep_local_ops_on_refresh=False)
    lr = MemoryLink(r, srv, wire=True)
    r.set("rec/notes/0", {"body": "mine"}, 50)
    srv.lose_opacks = 1  # the op is still unanswered when the refresh arrives
    lr.run(100)
    [installed] = [o for o in lr.outputs if type(o).__name__ == "SnapshotInstalled"]
    assert installed.dropped_ops == 1 and len(r.queue) == 0 and not r.replica.pending
    assert r.replica.confirmed_values() == {s: v.values() for s, v in sorted(srv.records.records.items())}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alice", "bob"]), st.integers(0, 2),
                          st.sampled_from(["title", "body", "likes", "tags"]), st.integers(0, 9)),
                min_size=1, max_size=30),
       st.integers(0, 2**32))
def test_partitioned_clients_converge_and_see_each_conflict_once(edits, seed):
    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    for link in (la, lb):
        link.up = False
        link.drop(1)
    rnd = random.Random(seed)
    now = 10
    for user, rec, field, v in edits:
        core = a if user == "alice" else b
        core.set(f"rec/notes/{rec}", {field: 1 if field == "likes" else f"{user}{v}"}, now + rnd.randint(0, 5))
        now += 3
    la.up = lb.up = True
    settle([la, lb], now + 100_000, rounds=200)
    settle([la, lb], now + 500_000, rounds=200)
    assert len(a.queue) == len(b.queue) == 0
    server_view = {s: r.values() for s, r in sorted(srv.records.records.items())}
    assert a.replica.confirmed_values() == b.replica.confirmed_values() == server_view
    assert a.replica.confirmed.same_data(b.replica.confirmed)
    for link in (la, lb):
        ids = [o.conflict.id for o in link.outputs if type(o) is ConflictFound]
        assert len(ids) == len(set(ids))
        open_ids = {c.id for c in link.core.replica.conflicts()}
        assert open_ids <= set(ids)


def test_resolve_sends_the_decision_and_both_replicas_close_the_conflict():
    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    la.up = lb.up = False
    la.drop(1)
    lb.drop(1)
    a.set("rec/notes/1", {"title": "A"}, 10)
    b.set("rec/notes/1", {"title": "B"}, 11)
    la.up = lb.up = True
    settle([la, lb], 100_000, rounds=100)
    settle([la, lb], 200_000, rounds=100)
    [c] = a.replica.conflicts()
    assert {(w.stamp.user, w.value) for w in c.versions} == {("alice", "A"), ("bob", "B")}
    choice = next(w.stamp.op_id for w in c.versions if w.value == "B")
    la.do(a.resolve(c.id, choice, 300_000), 300_000)
    settle([la, lb], 300_001, rounds=100)
    assert a.replica.conflicts() == [] and b.replica.conflicts() == []
    assert a.get("rec/notes/1")["title"] == b.get("rec/notes/1")["title"] == "B"


def test_presence_helpers():
    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    la.do(a.join("room1"), 1)
    lb.do(b.join("room1"), 1)
    la.do(a.set_presence("room1", {"typing": True}), 2)
    settle([la, lb], 3)
    assert b.others("room1") == {"alice": {"typing": True}}


def test_joined_lists_members_as_maps_and_the_current_presence_states():
    # docs/protocol.md: ``joined {room, members: [{user, client, online}], states: [{user, conn,
    # state, ttl_s}]}``: a client that was away gets the current states on ``joined``.
    core = SessionCore(user="bob", rng=random.Random(1))
    core.connect(0)
    core.connected(0)
    _welcome(core, 0)
    out = core.receive({"t": "joined", "room": "r", "members": [
        {"user": "alice", "client": "c-a", "online": True}, {"user": "bob", "client": "c-b", "online": True},
        {"user": "carol", "client": "c-c", "online": False}],
        "states": [{"user": "alice", "conn": "s1", "state": {"typing": True}, "ttl_s": 29.5}]}, 1)
    assert [type(o).__name__ for o in out] == ["RoomMessage"]
    assert core.others("r") == {"alice": {"typing": True}, "carol": None}


def test_room_and_direct_messages_are_stored_answered_and_delivered_once():
    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    la.do(a.join("room1"), 1)
    lb.do(b.join("room1"), 1)
    [joined] = [o.msg for o in lb.outputs if type(o) is RoomMessage and o.msg["t"] == "joined"]
    assert [m["user"] for m in joined["members"]] == ["alice", "bob"]  # maps, not bare names
    la.do(a.say("room1", {"text": "hi"}, msg_id="m1"), 2)
    la.do(a.say("room1", {"text": "hi"}, msg_id="m1"), 3)  # resent (unsure it arrived): stored once
    la.do(a.dm("bob", {"text": "psst"}, msg_id="d1"), 4)
    settle([la, lb], 5)
    sent = [o.msg for o in la.outputs if type(o) is RoomMessage and o.msg["t"] == "sent"]
    stored = {e.position: (e.stream, e.type, e.data["data"]) for e in srv.events() if e.type.endswith(".message")}
    assert [(m["id"], m["duplicate"]) for m in sent] == [("m1", False), ("m1", True), ("d1", False)]
    assert sent[0]["pos"] == sent[1]["pos"] and stored[sent[0]["pos"]] == ("room/room1", "room.message", {"text": "hi"})
    assert stored[sent[2]["pos"]] == ("dm/bob", "dm.message", {"text": "psst"})
    got = [o.msg for o in lb.outputs if type(o) is RoomMessage and o.msg["t"] == "msg"]
    assert [(m["from"], m.get("room"), m.get("direct", False), m["data"], m["pos"]) for m in got] == [
        ("alice", "room1", False, {"text": "hi"}, sent[0]["pos"]),
        ("alice", None, True, {"text": "psst"}, sent[2]["pos"])]
    assert not any(o.msg["t"] == "msg" for o in la.outputs if type(o) is RoomMessage)  # not echoed


def test_a_member_joining_later_gets_the_current_presence_states():
    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    la.do(a.join("room1"), 1)
    la.do(a.set_presence("room1", {"typing": True}), 2)
    lb.do(b.join("room1"), 3)
    assert b.others("room1") == {"alice": {"typing": True}}


def test_events_outside_the_subscription_do_not_make_it_too_far_behind():
    srv = core_server(CFG, max_behind_events=5)
    (w, lw), = pair(srv, "writer")
    lw.run(0)
    for i in range(10):
        lw.do(w.join(f"room{i}"), 1)  # ten presence.joined events on room/...: none under rec/
    (r, lr), = pair(srv, "reader")
    settle([lr], 2)
    assert not [o for o in lr.outputs if type(o).__name__ == "SnapshotInstalled"]


def test_core_is_small():
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cores = [SessionCore(user="u", queue=MemoryOpQueue(), client_id=f"c{i}") for i in range(1000)]
    per_core = (tracemalloc.get_traced_memory()[0] - before) / len(cores)
    tracemalloc.stop()
    assert per_core < 4096, per_core


# ---------------------------------------------------------------- deadlines in CONNECTING and for saves
from syncline.clientkit.core import Connect, Disconnect, EventsApplied, StateChanged  # noqa: E402


def _welcome(core, now):
    return core.receive({"t": "welcome", "session": "s", "head": 0}, now)


def test_connecting_without_transport_times_out_and_backs_off():
    # The attempt is cut off before the transport even opens (a partition while connecting):
    # the core gives it up at its handshake deadline instead of waiting for ever.
    core = SessionCore(user="u", rng=random.Random(1), handshake_timeout_ms=7_000)
    assert core.connect(0) == [StateChanged(State.OFFLINE, State.CONNECTING), Connect(1)]
    assert core.next_deadline() == 7_000
    assert core.tick(6_999) == [] and core.state is State.CONNECTING
    out = core.tick(7_000)
    assert out[0] == Disconnect("handshake_timeout")
    assert StateChanged(State.CONNECTING, State.OFFLINE) in out and core.state is State.OFFLINE
    retry = core.next_deadline()
    assert retry > 7_000 and core.tick(retry - 1) == []
    assert Connect(2) in core.tick(retry)  # backed off, then tries again
    assert core.next_deadline() == retry + 7_000


def test_handshake_deadline_restarts_at_connected_and_a_late_welcome_is_ignored():
    core = SessionCore(user="u", rng=random.Random(1))  # default: 10 s
    core.connect(0)
    hello = core.connected(4_000)  # the transport opened; ``hello`` went out, ``welcome`` never comes
    assert hello and hello[0].msg["t"] == "hello"
    assert core.next_deadline() == 14_000
    assert core.tick(13_999) == []
    out = core.tick(14_000)
    assert out[0] == Disconnect("handshake_timeout") and core.state is State.OFFLINE
    assert _welcome(core, 14_001) == [] and core.state is State.OFFLINE  # too late: harmless


def test_welcome_in_time_clears_the_handshake_deadline():
    core = SessionCore(user="u", rng=random.Random(1), heartbeat_ms=30_000, stale_ms=90_000)
    core.connect(0)
    core.connected(100)
    _welcome(core, 200)
    assert core.state is State.ONLINE
    assert core.next_deadline() == 100 + 30_000  # the heartbeat, not the handshake
    assert not any(type(o) is Disconnect for o in core.tick(10_100))
    assert core.state is State.ONLINE


def test_handshake_deadline_none_waits_as_before():
    core = SessionCore(user="u", rng=random.Random(1), handshake_timeout_ms=None)
    core.connect(0)
    assert core.next_deadline() is None
    assert core.tick(10**9) == [] and core.state is State.CONNECTING


def test_next_deadline_includes_the_periodic_position_save():
    q = MemoryOpQueue()
    core = SessionCore(user="u", queue=q, rng=random.Random(1), persist_interval_ms=1_000)
    core.connect(0)
    core.connected(0)
    _welcome(core, 0)
    assert core.next_deadline() == 30_000  # nothing to save yet
    core.receive({"t": "events", "sub": "main", "next": 5, "head": 5,
                  "events": [{"position": 5, "type": "feed.posted", "stream": "feed/x", "data": {}}]}, 400)
    assert core.position == 5 and q.load_replica()[0] == 0  # throttled: not saved at once
    assert core.next_deadline() == 1_000  # the last save (at 0) + persist_interval_ms
    core.tick(1_000)
    assert q.load_replica()[0] == 5
    assert core.next_deadline() == 30_000  # saved: no save deadline left


def test_no_save_deadline_without_persistence():
    core = SessionCore(user="u", rng=random.Random(1), persist_replica=False)
    core.connect(0)
    core.connected(0)
    _welcome(core, 0)
    core.receive({"t": "events", "sub": "main", "next": 3, "head": 3,
                  "events": [{"position": 3, "type": "feed.posted", "stream": "feed/x", "data": {}}]}, 10)
    assert core.next_deadline() == 30_000


# ---------------------------------------------------------------- many replicas in one process
def test_replicas_sharing_wire_events_and_decodes_end_like_one_alone():
    from syncline.clientkit.replica import RecordsReplica
    from syncline.engine.codec import pack, unpack
    from syncline.engine.records import payloads

    srv = core_server(CFG)
    (a, la), (b, lb) = pair(srv, "alice", "bob")
    settle([la, lb], 0)
    for i in range(30):
        la.do(a.set(f"rec/notes/{i % 4}", {"title": f"t{i}", "likes": 1, "body": [i]}, 10 + i), 10 + i)
        lb.do(b.set(f"rec/notes/{i % 3}", {"likes": 2}, 10 + i), 10 + i)
    settle([la, lb], 100)
    wire = [e.to_wire() for e in srv.events() if e.type == "record.patched"]
    payloads.clear_patch_cache()
    alone = RecordsReplica(CFG)
    for e in unpack(pack(wire)):
        alone.apply_wire_events([e])
    shared = [RecordsReplica(CFG) for _ in range(4)]
    for e in wire:  # the very same objects for every replica (as the simulator hands them out)
        for r in shared[:2]:
            r.apply_wire_events([e])
    for r in shared[2:]:  # equal copies (as separate frames decode), in batches
        r.apply_wire_events(unpack(pack(wire)))
    want = alone.confirmed_values()
    assert want == a.replica.confirmed_values() == srv_values(srv)
    for r in shared:
        assert r.confirmed_values() == want
        assert all(r.version(s) == alone.version(s) for s in alone.streams())
    # Values that are not scalars are never shared between replicas that got separate copies.
    assert shared[2].get("rec/notes/1")["body"] is not shared[3].get("rec/notes/1")["body"]


def srv_values(srv):
    return {s: r.values() for s, r in sorted(srv.records.records.items())}


def test_cores_sharing_one_events_list_skip_what_each_applied_already():
    # The simulator hands one list to many cores (their replicas share folds): its facts
    # are read once, but each core still applies only what is past its own position.
    from syncline.clientkit.replica import SharedFolds
    from syncline.engine.clocks import HLCTimestamp

    def ev(p: int, wall: int) -> dict:
        return {"position": p, "type": "note.added", "stream": "note/1",
                "clock": {"hlc": HLCTimestamp(wall, 0, "other").encode()}}

    batch = [ev(3, 900), ev(5, 950), ev(7, 940)]
    shared = SharedFolds()
    cores = []
    for start in (0, 4):
        core = SessionCore(user="u", rng=random.Random(1), position=start)
        core.replica.shared = shared
        core.connect(0)
        core.connected(1)
        _welcome(core, 2)
        cores.append(core)
    outs = [core.receive({"t": "events", "sub": "main", "events": batch, "next": 7}, 10) for core in cores]
    applied = [[e["position"] for o in out if type(o) is EventsApplied for e in o.events] for out in outs]
    assert applied == [[3, 5, 7], [5, 7]]
    for core in cores:
        assert core.position == 7 and core._hlc.wall_ms == 950  # past the latest remote clock
    again = cores[0].receive({"t": "events", "sub": "main", "events": batch, "next": 7}, 20)
    assert not any(type(o) is EventsApplied for o in again)  # exactly once


# ---------------------------------------------------------------- the asyncio client over the in-memory transport
async def test_asyncio_clients_sync_through_the_memory_connector():
    from syncline.clientkit.client import SynclineClient
    from syncline.clientkit.transports.memory import MemoryConnector

    srv = core_server(CFG)
    connector = MemoryConnector(srv)
    a = SynclineClient(user="alice", connector=connector.for_user("alice"), config=CFG)
    b = SynclineClient(user="bob", connector=connector.for_user("bob"), config=CFG)
    await a.start()
    await b.start()
    try:
        a.set("rec/notes/1", {"body": "x", "likes": 2})
        b.set("rec/notes/1", {"likes": 3})
        await a.wait_until(lambda: a.pending == 0 and b.pending == 0, 10)
        await a.wait_until(lambda: a.get("rec/notes/1") == b.get("rec/notes/1") == {"body": "x", "likes": 5}, 10)
        assert srv_values(srv) == {"rec/notes/1": {"body": "x", "likes": 5}}
    finally:
        await a.close()
        await b.close()
