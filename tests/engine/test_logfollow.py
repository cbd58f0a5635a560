"""Realtime that follows the log: the delivery gate and a document fed by several paths.

The property tests play gateways that share one log: writers on each append updates,
apply them at once (the fast path) and relay some of them to the other gateways (a
Redis that delays, duplicates or drops); each gateway's follower reads the log at
random moments. Whatever the interleaving, every update is applied exactly once per
gateway, every gateway converges to the full replay, and every snapshot a gateway
takes equals the replay of the log up to the snapshot's position.
"""
from __future__ import annotations

from dataclasses import dataclass

import pycrdt
from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.engine.docfollow import FollowedDocument
from syncline.engine.documents import Document
from syncline.engine.lib0 import Reader
from syncline.engine.logfollow import AHEAD_MAX, DeliveryGate

# -- the gate alone ----------------------------------------------------------------


def test_claim_then_log_acts_once():
    g = DeliveryGate(10)
    assert g.claim(12) and not g.claim(12)
    assert not g.exact and g.ahead == 1
    assert g.from_log(11)  # not claimed: the log brings it
    assert not g.from_log(12)  # claimed earlier: skipped
    assert g.exact and g.cursor == 12
    assert not g.claim(12) and not g.claim(5)


def test_floor_marks_loaded_positions_as_seen():
    g = DeliveryGate(3, floor=8)
    assert not g.exact  # loaded past the cursor
    assert not g.from_log(7) and not g.claim(8)
    assert g.claim(9)
    g.passed(8)
    assert not g.exact  # 9 is still early
    assert not g.from_log(9) and g.exact


def test_unclaim_lets_the_log_copy_through():
    g = DeliveryGate()
    assert g.claim(4)
    g.unclaim(4)
    assert g.from_log(4)


def test_full_ahead_refuses_rather_than_forgets():
    g = DeliveryGate()
    for p in range(1, AHEAD_MAX + 1):
        assert g.claim(p)
    assert not g.claim(AHEAD_MAX + 1) and g.overflowed == 1
    assert g.from_log(AHEAD_MAX + 1)  # refused early, so the log copy is new


@given(
    positions=st.lists(st.integers(1, 200), unique=True, min_size=1, max_size=60).map(sorted),
    claims=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 80)), max_size=120),
    passes=st.lists(st.integers(0, 80), max_size=20),
)
def test_each_position_acted_on_once_in_any_interleaving(positions, claims, passes):
    """Fast-path claims (repeated, in any order) interleaved with the log's in-order
    delivery: each position is acted on exactly once, and the gate is exact at the end."""
    gate = DeliveryGate()
    acted: list[int] = []
    schedule: list[tuple[str, int]] = [("log", i) for i in range(len(positions))]
    for idx, at in claims:
        schedule.insert(min(at, len(schedule)), ("claim", positions[idx % len(positions)]))
    for at in passes:
        schedule.insert(min(at, len(schedule)), ("pass", 0))
    delivered = 0
    for kind, value in schedule:
        if kind == "log":
            p = positions[value]
            delivered = value + 1
            if gate.from_log(p):
                acted.append(p)
        elif kind == "claim":
            if gate.claim(value):
                acted.append(value)
        else:  # the follower finished a page at what it has read so far
            gate.passed(positions[delivered - 1] if delivered else 0)
    assert sorted(acted) == positions and len(acted) == len(set(acted))
    assert gate.exact and gate.cursor == positions[-1]


# -- documents fed by several paths ------------------------------------------------------


@dataclass
class LogEvent:
    position: int
    version: int
    data: bytes


def replay(updates: list[bytes]) -> pycrdt.Doc:
    d = pycrdt.Doc()
    for u in updates:
        d.apply_update(u)
    return d


def state_vector(doc: pycrdt.Doc) -> dict[int, int]:
    r = Reader(doc.get_state())
    return {r.read_var_uint("client"): r.read_var_uint("clock") for _ in range(r.read_var_uint("n"))}


def same_doc(a: pycrdt.Doc, b: pycrdt.Doc) -> bool:
    return (str(a.get("t", type=pycrdt.Text)) == str(b.get("t", type=pycrdt.Text))
            and state_vector(a) == state_vector(b))


class Gateway:
    def __init__(self, log: list[LogEvent], *, follower_at: int) -> None:
        self.log = log
        self.followed = FollowedDocument(Document(), follower_at=follower_at)
        self.applied: list[int] = []  # positions applied (each must appear once)
        self.snapshots = []

    def follow(self, upto: int) -> None:
        """The follower reads the log from its cursor up to ``upto``."""
        for e in self.log:
            if self.followed.gate.cursor < e.position <= upto and self.followed.from_log(e):
                self.applied.append(e.position)
        self.followed.passed(upto)

    def snapshot(self) -> None:
        snap = self.followed.snapshot()
        if snap is not None:
            self.snapshots.append(snap)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 2), st.text("abcxyz", min_size=1, max_size=3),
                      st.integers(0, 100)),
            st.tuples(st.just("relay"), st.integers(0, 2), st.integers(0, 50), st.booleans()),
            st.tuples(st.just("follow"), st.integers(0, 2), st.integers(0, 50), st.booleans()),
            st.tuples(st.just("snapshot"), st.integers(0, 2), st.none(), st.none()),
        ),
        max_size=50,
    )
)
def test_gateways_converge_and_snapshots_equal_replay(steps):
    log: list[LogEvent] = []
    gws = [Gateway(log, follower_at=0) for _ in range(3)]
    writers = [pycrdt.Doc(client_id=100 + i) for i in range(3)]
    for w in writers:
        w.get("t", type=pycrdt.Text)
    relay_queue: list[tuple[int, LogEvent]] = []  # (target gateway, event): Redis in flight
    for kind, g, a, b in steps:
        gw = gws[g]
        if kind == "write":
            writer = writers[g]
            text = writer.get("t", type=pycrdt.Text)
            # The writer sees its own gateway's document (a client connected to it).
            writer.apply_update(gw.followed.document.encode_state())
            before = writer.get_state()
            text.insert(b % (len(str(text)) + 1), a)
            update = writer.get_update(before)
            e = LogEvent(len(log) + 1, len(log) + 1, update)
            log.append(e)
            # As the gateway does: admit (it reads the update and keeps the parse), append,
            # then apply it locally through that parse (the checked way).
            assert gw.followed.document.admit(update)
            if gw.followed.local(update, e.position, e.version):
                gw.applied.append(e.position)
            relay_queue.extend((t, e) for t in range(3) if t != g)
        elif kind == "relay" and relay_queue:
            target, e = relay_queue.pop(a % len(relay_queue))
            if b:  # delivered (else Redis lost it)
                if gws[target].followed.relayed(e.data, e.position):
                    gws[target].applied.append(e.position)
        elif kind == "follow":
            upto = len(log) if b else min(len(log), gw.followed.gate.cursor + a)
            gw.follow(upto)
        elif kind == "snapshot":
            gw.snapshot()
    every = [e.data for e in log]
    for gw in gws:
        gw.follow(len(log))
        gw.snapshot()
        assert sorted(gw.applied) == list(range(1, len(log) + 1)), "each update applied exactly once"
        assert same_doc(gw.followed.document.ydoc, replay(every))
        for snap in gw.snapshots:
            from_snapshot = Document.load(snap, [(e.position, e.data) for e in log])
            assert same_doc(replay([snap.state]), replay(every[: snap.position])), snap.position
            assert same_doc(from_snapshot.ydoc, replay(every)), "snapshot + tail == full replay"


def test_a_late_load_skips_what_it_loaded_and_takes_what_it_missed():
    """A room loaded while the follower is behind: the follower's copies of what the load
    held are skipped, later updates applied, and no snapshot is allowed until the follower
    has passed what the load held."""
    w = pycrdt.Doc(client_id=7)
    text = w.get("t", type=pycrdt.Text)
    log = []
    for i, ch in enumerate("abcd", start=1):
        before = w.get_state()
        text.insert(len(str(text)), ch)
        log.append(LogEvent(i, i, w.get_update(before)))
    loaded = Document.load(None, [(e.position, e.data) for e in log[:3]])
    f = FollowedDocument(loaded, follower_at=1)
    assert f.snapshot() is None
    applied = [e.position for e in log[1:] if f.from_log(e)]
    assert applied == [4]
    f.passed(4)
    snap = f.snapshot()
    assert snap is not None and snap.position == 4 and same_doc(replay([snap.state]), replay([e.data for e in log]))
