"""Snapshots and the persisted replica: regressions found by the simulator.

1. After a snapshot, ops it already contains leave the optimistic overlay (they were
   shown twice: a counter doubled).
2. A snapshot carries the field state (stamps, clocks), so a late write the server
   superseded does not win on a replica that just loaded a snapshot.
3. Set fields (``set_union``) survive a snapshot as sets: the next merge works.
4. The confirmed replica and its position are saved in the queue's SQLite file; a
   restart resumes from that position.
"""
from __future__ import annotations

import random

from ck_memory import core_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncline.clientkit.core import SessionCore, SnapshotInstalled, State
from syncline.clientkit.queue import MemoryOpQueue, SqliteOpQueue
from syncline.clientkit.replica import RecordsReplica
from syncline.clientkit.transports.core_server import CoreServer, open_config
from syncline.clientkit.transports.memory import MemoryLink
from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.codec import pack, unpack
from syncline.engine.records import (
    MANUAL,
    ClientOp,
    CollectionPolicy,
    RecordsState,
    decode_record_state,
    encode_record_state,
    merged,
    reconcile,
    record_snapshot,
)

CFG = open_config(notes=CollectionPolicy(fields={"title": MANUAL, "likes": merged("counter"),
                                                 "tags": merged("set_union"), "top": merged("max")}))


def core(user: str, **kw) -> SessionCore:
    return SessionCore(user=user, client_id=f"c-{user}", config=CFG, rng=random.Random(user), **kw)


def settle(links, now, rounds=50):
    for _ in range(rounds):
        moved = sum(link.run(now) for link in links)
        if not moved and all(link.core.state is State.ONLINE or not link.up for link in links):
            return now
        now += 1000
    return now


def server_values(srv: CoreServer) -> dict:
    return {s: r.values() for s, r in sorted(srv.records.records.items())}


def fill(srv: CoreServer, n: int, now: int = 1) -> None:
    w = core("filler")
    lw = MemoryLink(w, srv, wire=True)
    lw.run(now)
    for i in range(n):
        lw.do(w.set(f"rec/notes/f{i}", {"body": i}, now + i), now + i)


def test_snapshot_drains_the_overlay_of_ops_it_contains():
    srv = core_server(CFG, max_behind_events=5)
    fill(srv, 20)
    r = core("reader")
    lr = MemoryLink(r, srv, wire=True)
    lr.up = False
    lr.run(100)
    r.set("rec/notes/1", {"likes": 1, "tags": ["a"]}, 101)
    lr.up = True
    settle([lr], 200)  # the op is committed, then a refresh installs a snapshot that contains it
    assert [o for o in lr.outputs if type(o) is SnapshotInstalled]
    assert len(r.queue) == 0 and not r.replica.pending
    assert r.get("rec/notes/1") == {"likes": 1, "tags": frozenset({"a"})}  # once, not twice
    assert r.replica.sees(f"{r.client_id}.1", "rec/notes/1")
    assert r.replica.confirmed_values() == server_values(srv)


def test_a_late_superseded_write_does_not_win_after_a_snapshot():
    srv = core_server(CFG, max_behind_events=5)
    w = core("writer")
    lw = MemoryLink(w, srv, wire=True)
    lw.run(0)
    lw.do(w.set("rec/notes/1", {"body": "new"}, 10_000), 10_000)
    fill(srv, 20, now=10_001)
    r = core("reader")
    lr = MemoryLink(r, srv, wire=True)
    settle([lr], 10_100)
    assert [o for o in lr.outputs if type(o) is SnapshotInstalled]
    # A client whose clock is behind writes the same field late: the server keeps "new".
    late = core("late")
    ll = MemoryLink(late, srv, wire=True)
    ll.run(5)
    ll.do(late.set("rec/notes/1", {"body": "old"}, 5), 5)
    settle([lr], 10_200)
    assert srv.records.get("rec/notes/1").values()["body"] == "new"
    assert r.get("rec/notes/1") == {"body": "new"}
    assert r.replica.confirmed.get("rec/notes/1").same_data(srv.records.get("rec/notes/1"))


def test_set_fields_survive_a_snapshot_and_keep_merging():
    srv = core_server(CFG, max_behind_events=5)
    w = core("writer")
    lw = MemoryLink(w, srv, wire=True)
    lw.run(0)
    lw.do(w.set("rec/notes/1", {"tags": ["x", "y"], "top": 3}, 1), 1)
    fill(srv, 20, now=2)
    r = core("reader")
    lr = MemoryLink(r, srv, wire=True)
    settle([lr], 100)
    assert [o for o in lr.outputs if type(o) is SnapshotInstalled]
    lw.do(w.set("rec/notes/1", {"tags": ["z"]}, 200), 200)
    r.set("rec/notes/1", {"tags": ["q"]}, 201)  # the overlay merges into the snapshot's set too
    assert r.get("rec/notes/1")["tags"] == frozenset({"x", "y", "q"})
    settle([lr, lw], 300)
    assert r.replica.confirmed_values() == server_values(srv)
    assert r.get("rec/notes/1")["tags"] == frozenset({"x", "y", "z", "q"})


def test_values_only_snapshot_of_a_set_field_converts_the_list_back():
    rep = RecordsReplica(CFG)
    rep.install_snapshot({"rec/notes/1": {"kind": "record", "version": 1, "values": {"tags": ["a", "b"]}}},
                         keep_pending=True)
    op = ClientOp("c.1", "c", "u", "rec/notes/1", VectorClock({"c": 1}), HLCTimestamp(5, 0, "c"),
                  {"tags": ["c"]})
    rep.local(op)
    assert rep.get("rec/notes/1")["tags"] == frozenset({"a", "b", "c"})


# ---- property: a replica that loads a snapshot at any point ends equal to one that folded everything

_FIELDS = ("body", "title", "likes", "tags", "top")


def _value(field: str, n: int):
    return {"likes": n % 3 + 1, "tags": [f"t{n % 4}"], "top": n % 7}.get(field, f"v{n}")


@st.composite
def histories(draw):
    n = draw(st.integers(1, 30))
    ops = []
    for i in range(n):
        client = draw(st.sampled_from(["a", "b", "c"]))
        fields = draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3, unique=True))
        ops.append((client, draw(st.integers(0, 2)), draw(st.integers(1, 50)), fields, i))
    return ops, draw(st.integers(0, n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_snapshot_then_fold_equals_fold_of_everything(h):
    ops_spec, split = h
    state = RecordsState()
    events, seen = [], {}
    for client, rec, wall, fields, i in ops_spec:
        stream = f"rec/notes/{rec}"
        # Each client sometimes writes with a stale view (concurrent writes, late writes).
        vc = seen.get((client, stream), VectorClock()).increment(client)
        seen[(client, stream)] = vc
        op = ClientOp(f"{client}.{i}", client, client, stream, vc, HLCTimestamp(wall, i, client),
                      {f: _value(f, i) for f in fields})
        r = reconcile(state, [op], CFG, now_ms=wall)
        state = r.state
        for se in r.events:
            events.append({"type": se.event.type, "stream": se.stream, "data": unpack(pack(se.event.data)),
                           "position": len(events) + 1})
    full = RecordsReplica(CFG)
    full.apply_wire_events(events)
    part = RecordsReplica(CFG)
    part.apply_wire_events(events[:split])
    content = {s: record_snapshot(rec, rec.version, CFG.registry) for s, rec in part.confirmed.records.items()}
    loaded = RecordsReplica(CFG)
    loaded.install_snapshot(unpack(pack(content)), keep_pending=True)
    loaded.apply_wire_events(events[split:])
    assert loaded.confirmed.records.keys() == full.confirmed.records.keys()
    for s, rec in full.confirmed.records.items():
        assert loaded.confirmed.get(s).same_data(rec), s
        assert loaded.version(s) == full.version(s)
        again = decode_record_state(s, unpack(pack(encode_record_state(rec, CFG.registry))), CFG.registry)
        assert again.same_data(rec)


# ---- the persisted replica


def test_restart_resumes_from_the_saved_position(tmp_path):
    srv = core_server(CFG)
    fill(srv, 30)
    path = tmp_path / "q.db"
    a = core("alice", queue=SqliteOpQueue(path))
    la = MemoryLink(a, srv, wire=True)
    settle([la], 100)
    la.do(a.set("rec/notes/9", {"likes": 2, "tags": ["k"]}, 200), 200)
    settle([la], 300)
    assert a.position == srv.head
    # Queued but not yet answered when the process dies: it is in the saved state too.
    srv.lose_opacks = 1
    la.do(a.set("rec/notes/9", {"likes": 1}, 400), 400)
    assert len(a.queue) == 1
    a.save(401)
    position, values = a.position, a.replica.confirmed_values()
    a.queue.close()

    b = core("alice", queue=SqliteOpQueue(path))
    assert b.position == position and b.replica.confirmed_values() == values
    assert b.get("rec/notes/9")["likes"] == 3  # the queued op is not counted twice
    lb = MemoryLink(b, srv, wire=True)
    settle([lb], 500)
    events = [o for o in lb.outputs if type(o).__name__ == "EventsApplied"]
    assert not any(e["position"] <= position for o in events for e in o.events)  # nothing from 0 again
    assert len(b.queue) == 0 and not b.replica.pending
    assert b.replica.confirmed_values() == server_values(srv)
    assert b.get("rec/notes/9")["likes"] == 3


def test_saved_state_and_position_are_one_transaction(tmp_path):
    q = SqliteOpQueue(tmp_path / "q.db")
    q.save_replica(5, {"rec/a": b"1", "rec/b": b"2"})
    q.save_replica(9, {"rec/b": b"3"})
    assert q.load_replica() == (9, {"rec/a": b"1", "rec/b": b"3"})
    q.save_replica(12, {"rec/c": b"4"}, reset=True)
    assert q.load_replica() == (12, {"rec/c": b"4"})
    m = MemoryOpQueue()
    m.save_replica(5, {"rec/a": b"1"})
    m.save_replica(7, {"rec/b": b"2"})
    assert m.load_replica() == (7, {"rec/a": b"1", "rec/b": b"2"})
