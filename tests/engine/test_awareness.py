"""Awareness: codec round trips and the registry's rules (stale clocks, binding, removal)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Awareness, Doc

from syncline.engine.awareness import (
    AwarenessEntry,
    AwarenessRegistry,
    decode_awareness_update,
    encode_awareness_update,
)
from syncline.engine.errors import ProtocolError

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.lists(st.builds(AwarenessEntry, st.integers(0, 2**53 - 1), st.integers(0, 2**40), _json), max_size=8))
def test_codec_round_trip(entries: list[AwarenessEntry]) -> None:
    data = encode_awareness_update(entries)
    assert decode_awareness_update(data) == tuple(entries)


@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_awareness_update(data)
    except ProtocolError:
        pass


def _update(client: int, clock: int, state) -> bytes:
    return encode_awareness_update([AwarenessEntry(client, clock, state)])


def test_add_update_and_stale_clocks() -> None:
    reg = AwarenessRegistry()
    ch = reg.apply(_update(1, 1, {"c": 1}), connection="a", user="u1", now_ms=0)
    assert ch.added == (1,) and decode_awareness_update(ch.update) == (AwarenessEntry(1, 1, {"c": 1}),)
    ch = reg.apply(_update(1, 2, {"c": 2}), connection="a", user="u1", now_ms=1)
    assert ch.updated == (1,)
    # Same or older clock with a state: stale, ignored, nothing to relay.
    assert not reg.apply(_update(1, 2, {"c": 9}), connection="a", now_ms=2).changed
    assert not reg.apply(_update(1, 1, {"c": 9}), connection="a", now_ms=2).changed
    assert reg.states == {1: {"c": 2}}
    # Same clock with null removes (y-protocols rule).
    ch = reg.apply(_update(1, 2, None), connection="a", now_ms=3)
    assert ch.removed == (1,) and reg.states == {}
    # A late stale re-add cannot resurrect it.
    assert not reg.apply(_update(1, 2, {"c": 2}), connection="a", now_ms=4).changed
    assert reg.apply(_update(1, 3, {"c": 3}), connection="a", now_ms=5).added == (1,)


def test_binding_refuses_other_connections_and_disconnect_removes() -> None:
    reg = AwarenessRegistry()
    reg.apply(_update(1, 1, {"name": "ann"}), connection="a", user="ann", now_ms=0)
    reg.apply(_update(2, 1, {"name": "bob"}), connection="b", user="bob", now_ms=0)
    # b tries to overwrite ann's cursor: ignored.
    assert not reg.apply(_update(1, 5, {"name": "evil"}), connection="b", user="bob", now_ms=1).changed
    assert reg.owner_of(1) == ("a", "ann")
    assert reg.clients_of("a") == frozenset({1})

    ch = reg.disconnect("a", now_ms=2)
    assert ch.removed == (1,)
    assert decode_awareness_update(ch.update) == (AwarenessEntry(1, 1, None),)
    assert reg.states == {2: {"name": "bob"}}
    assert not reg.disconnect("a", now_ms=3).changed
    # Once released, the id can be claimed again with a newer clock.
    assert reg.apply(_update(1, 2, {"name": "ann"}), connection="c", user="ann", now_ms=4).added == (1,)


def test_disconnect_update_removes_state_in_pycrdt_awareness() -> None:
    reg = AwarenessRegistry()
    peer = Awareness(Doc())
    update = _update(7, 3, {"cursor": 1})
    reg.apply(update, connection="a", now_ms=0)
    peer.apply_awareness_update(update, "relay")
    assert peer.states[7] == {"cursor": 1}
    peer.apply_awareness_update(reg.disconnect("a", now_ms=1).update, "relay")
    assert 7 not in peer.states


def test_expire_and_forget() -> None:
    reg = AwarenessRegistry(outdated_after_ms=1000)
    reg.apply(_update(1, 1, {}), connection="a", now_ms=0)
    reg.apply(_update(2, 1, {}), connection="b", now_ms=600)
    ch = reg.expire(now_ms=1000)
    assert ch.removed == (1,) and set(reg.states) == {2}
    reg.disconnect("a", now_ms=1000)
    reg.expire(now_ms=2000)  # client 1 removed 1000 ms ago and released: forgotten
    assert reg.clock_of(1) is None
    assert reg.clock_of(2) == 1


def test_clients_per_connection_bound() -> None:
    reg = AwarenessRegistry(clients_per_connection_max=2)
    entries = [AwarenessEntry(i, 1, {}) for i in range(5)]
    ch = reg.apply(entries, connection="a", now_ms=0)
    assert ch.added == (0, 1)


def test_bad_bytes_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        AwarenessRegistry().apply(b"\x05", connection="a", now_ms=0)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.booleans()), max_size=40))
def test_registry_matches_highest_clock_model(ops) -> None:
    """One connection, any sequence: each client ends with the state of its first
    accepted highest-clock write (a removal at the same clock wins over a state)."""
    reg = AwarenessRegistry()
    model: dict[int, tuple[int, object]] = {}
    for step, (client, clock, remove) in enumerate(ops):
        state = None if remove else {"step": step}
        reg.apply([AwarenessEntry(client, clock, state)], connection="a", now_ms=step)
        known = model.get(client)
        if known is None or known[0] < clock or (known[0] == clock and state is None and known[1] is not None):
            model[client] = (clock, state)
    assert reg.states == {c: s for c, (_, s) in model.items() if s is not None}
