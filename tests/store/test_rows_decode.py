"""RecordedEvent built by the read path's re-classing (store/rows.py decode_rows) is the
same frozen dataclass as one built by its constructor: equal, immutable, picklable."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import msgpack
import pytest

from syncline.engine.events import Actor, RecordedEvent, Retention
from syncline.store.rows import decode_rows


def _row(position: int, *, clock: bytes | None = None, meta: bytes | None = None, retention: str = "standard"):
    return (position, f"id-{position}", "acme", "s/1", position, "a.b", 1, 1_000 + position, "alice", "c1",
            clock, msgpack.packb({"n": position}), meta, retention)


def _built(position: int, clock=None, meta=None, retention=Retention.STANDARD) -> RecordedEvent:
    return RecordedEvent(f"id-{position}", "acme", "s/1", position, position, "a.b", 1, 1_000 + position,
                         Actor("alice", "c1"), clock or {}, {"n": position}, meta or {}, retention)


def test_decoded_events_equal_constructed_ones():
    rows = [_row(1), _row(2, clock=msgpack.packb({"vc": 1}), meta=msgpack.packb({"m": 2}), retention="critical")]
    got = decode_rows(rows)
    assert got == [_built(1), _built(2, {"vc": 1}, {"m": 2}, Retention.CRITICAL)]
    assert all(type(ev) is RecordedEvent for ev in got)
    assert got[1].retention is Retention.CRITICAL


def test_decoded_events_are_frozen():
    ev = decode_rows([_row(1)])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.data = {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        del ev.id
    from syncline.store.rows import RecordedEventSlots

    for cls in (object, RecordedEventSlots):  # no way back to a writable class through the public API
        with pytest.raises((dataclasses.FrozenInstanceError, TypeError)):
            ev.__class__ = cls
    assert type(ev).__name__ == "RecordedEvent"
    assert not hasattr(ev, "__dict__")


def test_copy_pickle_replace_and_fields():
    ev = decode_rows([_row(3)])[0]
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(ev, proto)) == ev
    assert copy.copy(ev) == ev and copy.deepcopy(ev) == ev
    assert dataclasses.replace(ev, data=1).data == 1 and ev.data == {"n": 3}
    assert [f.name for f in dataclasses.fields(RecordedEvent)] == list(RecordedEvent.__match_args__)
    assert ev != dataclasses.replace(ev, position=4)


def test_rows_without_the_bound_columns_decode_to_the_same_events():
    from syncline.store.rows import READ_COLUMNS, read_columns

    full = [_row(1), _row(2, retention="critical")]
    want = decode_rows(full)
    cases = (
        (("tenant",), {"tenant": "acme"}),
        (("tenant", "stream"), {"tenant": "acme", "stream": "s/1"}),
    )
    for left_out, known in cases:
        keep = [READ_COLUMNS.index(c) for c in read_columns(left_out)]
        assert len(keep) == len(READ_COLUMNS) - len(left_out)
        assert decode_rows([tuple(r[i] for i in keep) for r in full], **known) == want
    with pytest.raises(ValueError):
        decode_rows([], stream="s/1")
    with pytest.raises(ValueError):
        read_columns(("stream",))


def test_rows_with_a_trailing_head_column_decode_like_plain_rows():
    # A PostgreSQL log page read with its head (store/read_queries.py ``with_head``): every
    # row ends with the head, which the decoder skips.
    rows = [_row(1), _row(2, retention="critical")]
    plain = decode_rows(rows)
    assert decode_rows([(*r, 99) for r in rows], trailing_head=True) == plain
    scoped = [tuple(v for k, v in enumerate(r) if k != 2) + (99,) for r in rows]  # without the tenant column
    assert decode_rows(scoped, tenant="acme", trailing_head=True) == plain
