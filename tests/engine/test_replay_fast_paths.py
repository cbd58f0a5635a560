"""The rebuild's fast paths give what the general code gives.

- the record fold's LWW/merge fast path (fields tracking the record clock) rebuilds
  exactly the reconciled state, also across strategy changes, manual fields, deletes,
  duplicates and any cut into batches;
- ``Document.apply_events`` (one yrs transaction per run) and the documents
  projection's batch fold give the documents, counters and checkpoint of applying
  the updates one by one, also out of order and when an update does not decode.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text
from test_records_convergence import CFG, deliveries, histories, recorded  # (tests/engine is on the path)

from syncline.engine.doc_history import DocsState, apply_doc_event
from syncline.engine.documents import CRDT_UPDATE
from syncline.engine.events import NO_ACTOR, RecordedEvent, Retention
from syncline.engine.projections.docs import apply_doc_runs
from syncline.engine.records import (
    LWW,
    MANUAL,
    CollectionPolicy,
    RecordsState,
    ResolutionConfig,
    fold_record_events,
    merged,
    reconcile,
)
from syncline.engine.records.fold import RecordsFolder

# The same fields under other strategies: delivering some batches under each makes
# fields change strategy in the log.
CFG2 = ResolutionConfig({"t": CollectionPolicy(fields={
    "title": merged("max"), "body": MANUAL, "n": LWW, "tags": MANUAL, "hi": LWW, "free": merged("counter"),
})})


def _plain(state: RecordsState) -> dict:
    return {s: (dict(r.fields), r.clock, dict(r.receipts)) for s, r in state.records.items()}


def _reconciled_log(data) -> tuple[RecordsState, list]:
    """Random ops reconciled in random deliveries, each under CFG or CFG2: the final
    state, and the events as the log would hold them."""
    ops = data.draw(histories())
    state, events = RecordsState(), []
    for batch in data.draw(deliveries(ops)):
        cfg = CFG if data.draw(st.booleans()) else CFG2
        state, evs, _ = reconcile(state, batch, cfg)
        events.extend(evs)
    return state, recorded(events)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_record_fold_in_any_batches_rebuilds_the_reconciled_state_across_strategy_changes(data):
    state, log = _reconciled_log(data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=4)))
    folded = RecordsState()
    for a, b in zip([0, *cuts], [*cuts, len(log)]):
        folded = fold_record_events(folded, log[a:b])
    assert _plain(folded) == _plain(state)
    assert folded == state


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_records_folder_keeps_work_between_batches_and_its_states_never_change_after(data):
    """A ``RecordsFolder`` fed the log in random batches, asked for its state at random
    moments: each state it gives equals the fold of the log up to there, and stays so
    after later batches (states are immutable; the folder's working copies are not)."""
    state, log = _reconciled_log(data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=5)))
    folder = RecordsFolder()
    seen = []  # (state given, a plain copy of it then, how many events it covers)
    for a, b in zip([0, *cuts], [*cuts, len(log)]):
        folder.fold(log[a:b])
        if data.draw(st.booleans()):
            s = folder.state()
            seen.append((s, _plain(s), b))
    final = folder.state()
    assert _plain(final) == _plain(state) and final == state
    for s, plain_then, upto in seen:
        assert _plain(s) == plain_then  # untouched by the batches folded after it
        assert _plain(s) == _plain(fold_record_events(RecordsState(), log[:upto]))


def _event(position: int, data, stream: str = "doc/a", type_: str = CRDT_UPDATE) -> RecordedEvent:
    return RecordedEvent(
        id=f"e{position}", tenant="t1", stream=stream, version=position, position=position, type=type_,
        schema=1, time_us=1_000 * position, actor=NO_ACTOR, clock={}, data=data, meta={},
        retention=Retention.STANDARD,
    )


def _keystrokes(n: int, rnd: random.Random, client: int) -> list[bytes]:
    doc = Doc(client_id=client)
    text = doc.get("text", type=Text)
    out = []
    for _ in range(n):
        before = doc.get_state()
        text.insert(rnd.randrange(len(text) + 1), rnd.choice("abc "))
        out.append(doc.get_update(before))
    return out


def _summary(state: DocsState) -> tuple:
    return state.position, {
        k: (d.text(), d.position, d.version, d.time_us, d.tail_events, d.tail_bytes, d.pending)
        for k, d in state.docs.items()
    }


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.integers(1, 400))
def test_document_runs_fold_like_one_update_at_a_time(seed, broken, page):
    rnd = random.Random(seed)
    updates = {s: _keystrokes(rnd.randrange(1, 300), rnd, i + 1) for i, s in enumerate(("doc/a", "doc/b"))}
    for us in updates.values():  # some out of order: they wait for the ones they need
        for _ in range(rnd.randrange(4)):
            i, j = rnd.randrange(len(us)), rnd.randrange(len(us))
            us[i], us[j] = us[j], us[i]
    items = [(s, u) for s, us in updates.items() for u in us]
    items.sort(key=lambda _: rnd.random())
    items = sorted(items, key=lambda x: rnd.random() < 0.5)  # long runs of one document, and mixes
    events = []
    for pos, (s, u) in enumerate(items, 1):
        if rnd.random() < 0.05:
            events.append(_event(pos, {"x": 1}, "room/r", "presence.joined"))
        else:
            events.append(_event(pos, u, s))
    if broken:
        i = rnd.randrange(len(events))
        e = events[i]
        events[i] = _event(e.position, b"\x01\x05garbage", e.stream)
    one, runs = DocsState(), DocsState()
    for i in range(0, len(events), page):
        chunk = events[i:i + page]
        err_one = err_runs = None
        for e in chunk:
            try:
                apply_doc_event(one, e)
            except Exception as exc:  # noqa: BLE001 - compared below
                err_one = type(exc)
                break
        try:
            apply_doc_runs(runs, chunk)
        except Exception as exc:  # noqa: BLE001
            err_runs = type(exc)
        assert err_one == err_runs
        assert _summary(one) == _summary(runs)
        if err_one is not None:
            break


def test_record_fold_settles_an_unwritten_field_when_a_one_node_op_moves_a_wider_record_clock():
    """The fold's inline clock advance (a one-node op clock, a record clock of several
    nodes): a field tracking the record clock that the op does not write keeps the
    record clock as it was before the op, in every cut of the log into batches."""
    from syncline.engine.clocks import HLCTimestamp, VectorClock
    from syncline.engine.records import ClientOp

    cfg = ResolutionConfig({"tasks": CollectionPolicy(fields={"title": LWW, "points": merged("counter")})})

    def op(i: int, client: str, tick: int, **set_) -> ClientOp:
        return ClientOp(
            op_id=f"{client}-{tick}", client=client, user="u", stream="rec/tasks/1",
            clock=VectorClock({client: tick}), hlc=HLCTimestamp(1_700_000_000_000 + i, 0, client), set=set_,
        )

    ops = [
        op(1, "c1", 1, title="a", points=1),
        op(2, "c2", 1, title="b", points=1),  # concurrent: the record clock has two nodes
        op(3, "c3", 1, title="c"),  # moves the record clock; points is not written
        op(4, "c1", 2, points=2),  # and title is not written
        op(5, "c2", 2, title="d", points=1),
    ]
    state, events, _ = reconcile(RecordsState(), ops, cfg)
    log = recorded(events)
    for cut in range(len(log) + 1):
        folded = fold_record_events(fold_record_events(RecordsState(), log[:cut]), log[cut:])
        assert _plain(folded) == _plain(state), cut
