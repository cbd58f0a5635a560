"""One suite for both op queues (SQLite file and memory): order, acks, limit, restart."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncline.clientkit.errors import QueueFull
from syncline.clientkit.queue import MemoryOpQueue, SqliteOpQueue
from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.records import ClientOp


def op(n: int, client: str = "c1", stream: str = "rec/notes/1") -> ClientOp:
    return ClientOp(f"{client}.{n}", client, "alice", stream, VectorClock({client: n}),
                    HLCTimestamp(1000 + n, 0, client), {"n": n}, (), n - 1)


@pytest.fixture(params=["memory", "sqlite"])
def make_queue(request, tmp_path):
    made = []

    def make(limit: int = 10_000, name: str = "q.db"):
        q = MemoryOpQueue(limit) if request.param == "memory" else SqliteOpQueue(tmp_path / name, limit)
        made.append(q)
        return q

    yield make
    for q in made:
        try:
            q.close()
        except Exception:
            pass


def test_order_peek_and_ack(make_queue):
    q = make_queue()
    for n in range(1, 11):
        q.append(op(n))
    batch = q.peek(0, 4)
    assert [b.op_id for b in batch] == ["c1.1", "c1.2", "c1.3", "c1.4"]
    assert [b.op_id for b in q.peek(batch[-1].seq, 100)][0] == "c1.5"
    assert q.ack(["c1.2", "c1.1", "nope"]) == 2
    assert [b.op_id for b in q.peek(0, 2)] == ["c1.3", "c1.4"]
    assert len(q) == 8
    assert q.peek(0, 1)[0].to_op() == op(3)


def test_append_is_idempotent_by_op_id(make_queue):
    q = make_queue()
    a = q.append(op(1))
    b = q.append(op(1))
    assert a.seq == b.seq and len(q) == 1


def test_limit_raises_typed_error_and_queues_nothing(make_queue):
    q = make_queue(limit=3)
    q.append_many([op(1), op(2)])
    with pytest.raises(QueueFull) as e:
        q.append_many([op(3), op(4)])
    assert e.value.code == "queue_full" and e.value.details["limit"] == 3
    assert len(q) == 2
    q.append(op(3))
    with pytest.raises(QueueFull):
        q.append(op(4))


def test_meta_goes_with_the_op(make_queue):
    q = make_queue()
    q.append(op(1), {"n": 1, "vc:rec/notes/1": {"c1": 1}})
    assert q.get_meta("n") == 1 and q.get_meta("vc:rec/notes/1") == {"c1": 1}
    assert q.get_meta("missing", 7) == 7


def test_sqlite_queue_survives_reopen(tmp_path):
    q = SqliteOpQueue(tmp_path / "q.db")
    q.append_many([op(n) for n in range(1, 6)], {"client": "c1"})
    q.ack(["c1.1"])
    q.close()  # (a kill -9 is tested against a real server in test_ck_e2e)
    q2 = SqliteOpQueue(tmp_path / "q.db")
    assert len(q2) == 4 and q2.get_meta("client") == "c1"
    assert [b.op_id for b in q2.peek(0, 10)] == ["c1.2", "c1.3", "c1.4", "c1.5"]
    q2.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "ack_front", "ack_random", "peek"]), st.integers(0, 20)),
                max_size=60))
def test_queue_peers_agree_with_a_model(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("q") / "q.db"
    queues = [MemoryOpQueue(50), SqliteOpQueue(path, 50)]
    model: list[str] = []
    n = 0
    try:
        for action, k in steps:
            if action == "append":
                ops = [op(n + i + 1) for i in range(k % 5 + 1)]
                full = len(model) + len(ops) > 50
                for q in queues:
                    if full:
                        with pytest.raises(QueueFull):
                            q.append_many(ops)
                    else:
                        q.append_many(ops)
                if not full:
                    n += len(ops)
                    model += [o.op_id for o in ops]
            elif action == "ack_front":
                ids = model[:k]
                for q in queues:
                    assert q.ack(ids) == len(ids)
                model = model[k:]
            elif action == "ack_random" and model:
                victim = model[k % len(model)]
                for q in queues:
                    assert q.ack([victim]) == 1
                model.remove(victim)
            for q in queues:
                assert [b.op_id for b in q.peek(0, 1000)] == model
                assert len(q) == len(model)
    finally:
        queues[1].close()
