"""y-protocols wire format: lib0 primitives, message codec, pycrdt interop, sync steps."""
from __future__ import annotations

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import (
    Awareness,
    Doc,
    Map,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from syncline.engine.awareness import AwarenessEntry, encode_awareness_update
from syncline.engine.documents import Document
from syncline.engine.errors import ProtocolError
from syncline.engine.lib0 import VAR_UINT_MAX, Reader, write_var_bytes, write_var_string, write_var_uint
from syncline.engine.yprotocol import (
    AwarenessMessage,
    Limits,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    UnknownMessageType,
    decode_message,
    encode_message,
    encode_permission_denied,
    encode_query_awareness,
    encode_sync_step1,
    encode_sync_update,
    handle_sync,
    sync_step1,
)
from syncline.engine.yupdates import InvalidUpdate


def _text_doc(content: str) -> Doc:
    doc = Doc()
    doc.get("text", type=Text).insert(0, content)
    return doc


# -- lib0 ----------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=VAR_UINT_MAX))
def test_var_uint_round_trip_and_matches_pycrdt(n: int) -> None:
    encoded = write_var_uint(n)
    assert encoded == pycrdt.write_var_uint(n)
    reader = Reader(encoded)
    assert reader.read_var_uint() == n
    reader.expect_end()


@given(st.binary(max_size=300), st.text(max_size=100))
def test_var_bytes_and_string_round_trip(data: bytes, text: str) -> None:
    reader = Reader(write_var_bytes(data) + write_var_string(text))
    assert reader.read_var_bytes(1000) == data
    assert reader.read_var_string(1000) == text
    reader.expect_end()


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x80", b"\xff" * 9, b"\xff\xff\xff\xff\xff\xff\xff\x7f"],  # last: 2**56-1 > 2**53-1
)
def test_var_uint_rejects_truncated_and_oversized(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        Reader(raw).read_var_uint()


def test_write_var_uint_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        write_var_uint(-1)
    with pytest.raises(ValueError):
        write_var_uint(VAR_UINT_MAX + 1)


# -- decode: nothing but a message or ProtocolError ---------------------------

_prefixes = st.sampled_from(
    [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01", b"\x02", b"\x02\x00", b"\x03"]
)


# The deadline is part of the contract: no frame may make the decoder (or pycrdt
# under it) spend long, whatever the bytes claim.
@settings(max_examples=2000, deadline=500)
@given(_prefixes, st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(prefix: bytes, tail: bytes) -> None:
    frame = prefix + tail
    try:
        msg = decode_message(frame)
    except ProtocolError:
        return
    # Whatever decodes re-encodes to the same bytes (one canonical frame per message),
    # except non-minimal var-uints, which lib0 also accepts.
    again = decode_message(encode_message(msg))
    assert again == msg


@settings(max_examples=300, deadline=500)
@given(st.binary(min_size=1, max_size=200), st.sampled_from([0, 1, 2]))
def test_sync_frame_with_arbitrary_payload(payload: bytes, sub: int) -> None:
    frame = bytes([0, sub]) + write_var_bytes(payload)
    try:
        msg = decode_message(frame)
    except ProtocolError:
        return
    assert isinstance(msg, (SyncStep1, SyncStep2, SyncUpdate))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_awareness_frame_with_arbitrary_payload(payload: bytes) -> None:
    try:
        msg = decode_message(b"\x01" + write_var_bytes(payload))
    except ProtocolError:
        return
    assert isinstance(msg, AwarenessMessage)


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # nothing
        b"\x00",  # sync without subtype
        b"\x00\x00",  # step 1 without payload
        b"\x00\x00\x05\x01",  # payload shorter than its length
        b"\x00\x00\x01\x00\x00",  # trailing byte
        b"\x00\x00\x02\x05\x01",  # state vector claims 5 pairs
        b"\x00\x02\x03\x01\x02\x03",  # update that does not decode
        b"\x00\x02\xff\xff\xff\xff\x0f",  # 4 GiB length
        b"\x01\x01\x01",  # awareness: payload says 1 entry, has none
        b"\x01" + write_var_bytes(b"\x01\x05\x01" + write_var_string("{bad")),
        b"\x01" + write_var_bytes(b"\x01\x05\x01" + write_var_string("NaN")),
        b"\x01" + write_var_bytes(b"\x01\x05\x01" + write_var_bytes(b"\xff\xfe")),
        b"\x01" + write_var_bytes(b"\x01\x05\x01" + write_var_string("[" * 5000 + "]" * 5000)),
        b"\x02\x00\x05ab",  # reason truncated
        b"\x03\x00",  # query-awareness with trailing bytes
    ],
)
def test_malformed_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(frame)


def test_update_claiming_huge_client_count_is_refused_cheaply() -> None:
    # yrs would reserve a map for 2**31 clients before failing.
    with pytest.raises(InvalidUpdate):
        decode_message(encode_sync_update(write_var_uint(2**31) + b"\x01\x02"))


def test_bad_update_is_invalid_update_and_can_be_skipped() -> None:
    frame = encode_sync_update(b"\x01\x02\x03")
    with pytest.raises(InvalidUpdate):
        decode_message(frame)
    assert decode_message(frame, check_updates=False) == SyncUpdate(b"\x01\x02\x03")


@pytest.mark.parametrize("frame", [b"\x04", b"\x7f\x01\x02", b"\x00\x03\x00", b"\x02\x01\x00"])
def test_unknown_types_have_their_own_subclass(frame: bytes) -> None:
    with pytest.raises(UnknownMessageType):
        decode_message(frame)


def test_limits_bound_frame_and_awareness() -> None:
    limits = Limits(frame_bytes_max=10, awareness_entries_max=1)
    with pytest.raises(ProtocolError):
        decode_message(encode_sync_step1(b"\x00") + b"", limits=Limits(frame_bytes_max=2))
    two = encode_awareness_update([AwarenessEntry(1, 1, {}), AwarenessEntry(2, 1, {})])
    with pytest.raises(ProtocolError):
        decode_message(b"\x01" + write_var_bytes(two), limits=limits)


# -- round trips ---------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
_client = st.integers(min_value=0, max_value=VAR_UINT_MAX)
_entries = st.lists(
    st.builds(AwarenessEntry, _client, st.integers(0, 2**32), _json), max_size=5
).map(tuple)


def _update_of(content: str) -> bytes:
    return _text_doc(content).get_update()


_messages = st.one_of(
    st.builds(lambda c: SyncStep1(_text_doc(c).get_state()), st.text(max_size=20)),
    st.builds(lambda c: SyncStep2(_update_of(c)), st.text(max_size=20)),
    st.builds(lambda c: SyncUpdate(_update_of(c)), st.text(max_size=20)),
    st.builds(lambda es: AwarenessMessage(encode_awareness_update(es), es), _entries),
    st.builds(PermissionDenied, st.text(max_size=50)),
    st.just(QueryAwareness()),
)


@given(_messages)
def test_encode_decode_round_trip(msg) -> None:
    frame = encode_message(msg)
    assert decode_message(frame) == msg
    assert encode_message(decode_message(frame)) == frame


def test_permission_denied_and_query_awareness_bytes() -> None:
    # Byte-exact against y-protocols: [messageAuth, messagePermissionDenied, varString].
    assert encode_permission_denied("read-only") == b"\x02\x00\x09read-only"
    assert encode_query_awareness() == b"\x03"


# -- interop with pycrdt's own helpers ----------------------------------------


def test_pycrdt_step1_decodes_and_our_reply_feeds_pycrdt() -> None:
    remote = _text_doc("hello from pycrdt")
    local = Document("doc/a")
    local.apply_update(_text_doc("server side ").get_update())

    msg = decode_message(create_sync_message(remote))
    assert msg == SyncStep1(remote.get_state())
    reply = handle_sync(local, msg)
    assert isinstance(decode_message(reply), SyncStep2)
    # pycrdt's handler takes the frame without the leading message-type byte.
    assert handle_sync_message(reply[1:], remote) is None

    their_reply = handle_sync_message(sync_step1(local)[1:], remote)
    assert isinstance(decode_message(their_reply), SyncStep2)
    assert handle_sync(local, their_reply) is None

    assert local.text() == str(remote.get("text", type=Text))
    # State vectors list clients in map order: compare them as maps, not bytes.
    assert _sv(local.state_vector()) == _sv(remote.get_state())


def _sv(state_vector: bytes) -> dict[int, int]:
    from syncline.engine.lib0 import Reader

    r = Reader(state_vector)
    return dict((r.read_var_uint(), r.read_var_uint()) for _ in range(r.read_var_uint()))


def test_pycrdt_update_message_both_ways() -> None:
    a, b = Doc(), Doc()
    frames: list[bytes] = []
    a.observe(lambda event: frames.append(create_update_message(event.update)))
    a.get("m", type=Map)["k"] = [1, 2, 3]
    a.get("text", type=Text).insert(0, "xyz")
    for frame in frames:
        msg = decode_message(frame)
        assert isinstance(msg, SyncUpdate)
        assert encode_message(msg) == frame
        handle_sync_message(encode_sync_update(msg.update)[1:], b)
    assert b.get("m", type=Map).to_py() == {"k": [1, 2, 3]}
    assert str(b.get("text", type=Text)) == "xyz"


def test_handle_sync_on_a_bare_pycrdt_doc() -> None:
    source = _text_doc("abc")
    target = Doc()
    reply = handle_sync(source, create_sync_message(target))
    handle_sync(target, reply)
    assert str(target.get("text", type=Text)) == "abc"
    with pytest.raises(ProtocolError):
        handle_sync(target, QueryAwareness())


def test_pycrdt_awareness_interop() -> None:
    doc = Doc()
    theirs = Awareness(doc)
    theirs.set_local_state({"user": {"name": "Zoë"}, "cursor": 3})
    frame = create_awareness_message(theirs.encode_awareness_update([doc.client_id]))
    msg = decode_message(frame)
    assert isinstance(msg, AwarenessMessage)
    assert msg.entries == (AwarenessEntry(doc.client_id, 1, {"user": {"name": "Zoë"}, "cursor": 3}),)

    other = Awareness(Doc())
    ours = encode_awareness_update([AwarenessEntry(42, 7, {"name": "Łukasz"})])
    other.apply_awareness_update(ours, "test")
    assert other.states[42] == {"name": "Łukasz"}
    other.apply_awareness_update(encode_awareness_update([AwarenessEntry(42, 7, None)]), "test")
    assert 42 not in other.states
