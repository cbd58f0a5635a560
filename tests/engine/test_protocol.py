"""The native protocol codec: valid messages round-trip; anything else is a ProtocolError."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncline.engine.errors import ProtocolError
from syncline.engine.protocol import (
    CLIENT_TYPES,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    decode_frame,
    encode_frame,
    message,
)

VALID = [
    message("hello", client="c1", resume={"s1": 4}),
    message("ping", id=1),
    message("sub", id="s1", prefixes=["rec/"], after=0),
    message("ack", sub="s1", upto=10),
    message("ops", id="b1", ops=[{"kind": "op", "op": "o1"}]),
    message("join", room="r1"),
    message("say", room="r1", data={"text": "hi", "blob": b"\x00\x01"}),
    message("dm", to="bob", data=None),
    message("presence", room="r1", state={"typing": True}),
    message("snapshot", id="x", index=0, total=1, checksum="ab", data=b"\xff"),
    message("events", sub="s1", events=[], next=3, head=3),
]


@pytest.mark.parametrize("msg", VALID)
@pytest.mark.parametrize("sub", [SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON])
def test_round_trip(msg, sub):
    assert decode_frame(encode_frame(msg, sub), sub) == msg


@pytest.mark.parametrize(
    "msg, code",
    [
        ({"t": "nope"}, "unknown_message"),
        ([1, 2], "invalid_message"),
        (message("sub", prefixes=["rec/"]), "invalid_message"),  # no id
        (message("ack", sub="s", upto=-1), "invalid_message"),
        (message("ack", sub="s", upto=True), "invalid_message"),
        (message("join", room=""), "invalid_message"),
        (message("sub", id="s", streams=["x"] * 300), "invalid_message"),
    ],
)
def test_invalid_messages_have_codes(msg, code):
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode_frame(msg))
    assert info.value.code == code


def test_server_messages_are_refused_from_clients():
    with pytest.raises(ProtocolError):
        decode_frame(encode_frame(message("welcome", session="s", tenant="t", user="u", head=0)),
                     allowed=CLIENT_TYPES)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data):
    try:
        decode_frame(data)
    except ProtocolError:
        pass


@given(st.text(max_size=300))
def test_arbitrary_text_decodes_or_raises_protocol_error(text):
    try:
        decode_frame(text, SUBPROTOCOL_JSON)
    except ProtocolError:
        pass
