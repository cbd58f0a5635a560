"""The native sync protocol (``/v1/ws``): message vocabulary and frame codec, sans-I/O.

Specified in docs/protocol.md. A message is a dict with a type under ``"t"``. One
frame carries one message: msgpack in binary frames (subprotocol
``syncline.v1.msgpack``) or JSON in text frames (``syncline.v1.json``, bytes as
``{"$b64": "..."}``). The gateway, the client kit and the simulator all speak it
through this module, so there is one definition of what is valid.

``decode_frame`` either returns a valid message or raises ``ProtocolError`` with a
stable code; it never raises anything else and it bounds what it accepts.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable

import msgpack

from .errors import ProtocolError
from .events import POSITION_MAX

SUBPROTOCOL_MSGPACK = "syncline.v1.msgpack"
SUBPROTOCOL_JSON = "syncline.v1.json"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)
MAX_FRAME_BYTES = 4 * 1024 * 1024
B64 = "$b64"

# Close codes (WebSocket close frames). 1000/1001 are standard; 4xxx are ours.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown: a "bye" message precedes it
CLOSE_PROTOCOL_ERROR = 4400  # undecodable or invalid message
CLOSE_UNAUTHENTICATED = 4401  # missing, expired, badly signed or malformed token
CLOSE_FORBIDDEN = 4403  # permission denied, or another tenant named
CLOSE_STALE = 4408  # silent for longer than the stale timeout
CLOSE_RATE_LIMITED = 4429  # repeat rate-limit offender, temporarily disconnected
CLOSE_DISABLED = 4503  # the WebSocket endpoint is disabled: use polling


class InvalidMessage(ProtocolError):
    code = "invalid_message"


class UnknownMessage(ProtocolError):
    code = "unknown_message"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


# ----------------------------------------------------------------- vocabulary
# Client -> server
HELLO = "hello"  # {client, [resume: {sub_id: position}]}
PING = "ping"  # {[id]}
SUB = "sub"  # {id, [streams], [prefixes], [types], [after], [rooms], [inbox]}
UNSUB = "unsub"  # {id}
ACK = "ack"  # {sub, upto}: the client has applied events up to this position
OPS = "ops"  # {id, ops: [op wire...]}: record ops and resolutions, in order
SNAP = "snap"  # {id, [streams], [prefixes]}: ask for a snapshot (answered in chunks)
JOIN = "join"  # {room}
LEAVE = "leave"  # {room}
SAY = "say"  # {room, data, [id]}: a room message, stored in room/<room>, answered by "sent"
DM = "dm"  # {to: user, data, [id]}: a direct message, stored in dm/<to>, answered by "sent"
PRESENCE = "presence"  # {room, state}: ephemeral typing/cursor state (also server -> client)
COMMAND = "command"  # refused over WebSocket: critical commands are REST only
AUTH = "auth"  # {token, [id]}: a new token for the same user and tenant (in-band refresh)

# Server -> client
WELCOME = "welcome"  # {session, tenant, user, head, heartbeat_s, stale_s}
PONG = "pong"  # {[id], time_us}
EVENTS = "events"  # {sub, events: [event wire], next, head, [prev]}
REFRESH = "refresh"  # {sub, head, reason}: too far behind, resync from a snapshot
OPACKS = "opacks"  # {id, results: [{op, kind, [conflicts], [resolved], [reason]}]}
SNAPSHOT = "snapshot"  # {id, index, total, checksum, data}: one chunk of a snapshot
JOINED = "joined"  # {room, members}
LEFT = "left"  # {room}
MSG = "msg"  # {room | direct: true, from, data, conn, pos}
SENT = "sent"  # {id, pos, duplicate}: a say/dm is stored at log position pos
CONFLICT = "conflict"  # {conflict: {...}}: a manual conflict for the client's records
WARN = "warn"  # {code, message}: e.g. rate_limited (first offence)
ERROR = "error"  # {code, message, [ref]}: a request failed; the connection stays open
BYE = "bye"  # {code, reason}: the server is closing the connection
AUTHED = "authed"  # {[id], exp}: the ``auth`` token is now the connection's; the session ends at ``exp``
TOKEN_MAX = 8192  # characters of a token in ``auth``

# The bus over the wire (docs/protocol.md#bus-consumers; subscription document checked
# by engine/consumer_wire.py). Client -> server:
PUBLISH = "publish"  # {id, stream, events: [{type, data, meta}], [expected_version], [key]} -> "published"
CONSUME = "consume"  # {id, [group], [kind], [filter], [lease_s], [max_batch], [credits], ...} -> "consuming"
CREDIT = "credit"  # {id, n}: the consumer may take n more deliveries
DACK = "dack"  # {id, ids}: deliveries done
DNACK = "dnack"  # {id, ids, [reason], [delay_s], [trace]}: deliveries failed (a counted attempt)
EXTEND = "extend"  # {id, ids, [lease_s]}: more time for deliveries in hand
UNCONSUME = "unconsume"  # {id}: leave; what is held goes back uncounted
# Server -> client
PUBLISHED = "published"  # {id, stream, first_position, last_position, ..., duplicate}
CONSUMING = "consuming"  # {id, session, group, kind, lease_s, max_batch, ...}
DELIVERIES = "deliveries"  # {id, deliveries: [{id, attempt, redelivered, lease_deadline_ms, event}], credits}
SETTLED = "settled"  # {id, op, unknown}: ids of a dack/dnack/extend this consumer does not hold
CONSUMER_CLOSED = "consumer_closed"  # {id, reason}
CONSUMER_IDS_MAX = 1000  # delivery ids per dack / dnack / extend
CREDITS_MAX = 1_000_000  # credits a consumer may hold

_str = lambda v: isinstance(v, str) and 0 < len(v) <= 255  # noqa: E731
_opt_str = lambda v: v is None or _str(v)  # noqa: E731
# Positions fit the store's BIGINT columns (engine.events.POSITION_MAX): a bigger one is an
# invalid message (code invalid_message), never a database error.
_pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= POSITION_MAX  # noqa: E731
_opt_pos = lambda v: v is None or _pos(v)  # noqa: E731


def _resume(v: Any) -> bool:
    """``hello.resume``: {subscription id: position}, at most 64 of them."""
    return v is None or (isinstance(v, dict) and len(v) <= 64
                         and all(_str(k) and _pos(p) for k, p in v.items()))


def _strs(limit: int) -> Callable[[Any], bool]:
    return lambda v: v is None or (isinstance(v, list) and len(v) <= limit and all(_str(x) for x in v))


_list = lambda v: isinstance(v, list) and len(v) <= 10_000  # noqa: E731
_dict = lambda v: isinstance(v, dict)  # noqa: E731
_opt_dict = lambda v: v is None or isinstance(v, dict)  # noqa: E731
_any = lambda v: True  # noqa: E731
_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")  # noqa: E731,E501


def _ids(v: Any) -> bool:
    """Delivery ids of a dack / dnack / extend: 1..CONSUMER_IDS_MAX strings."""
    return isinstance(v, list) and 0 < len(v) <= CONSUMER_IDS_MAX and all(_str(x) for x in v)


def _opt_str_max(limit: int) -> Callable[[Any], bool]:
    return lambda v: v is None or (isinstance(v, str) and len(v) <= limit)

# Required (True) and optional (False) fields, with their checks, per message type.
SCHEMAS: dict[str, dict[str, tuple[bool, Callable[[Any], bool]]]] = {
    HELLO: {"client": (False, _opt_str), "resume": (False, _resume)},
    PING: {"id": (False, _any)},
    SUB: {
        "id": (True, _str), "streams": (False, _strs(256)), "prefixes": (False, _strs(64)),
        "types": (False, _strs(64)), "after": (False, _opt_pos), "rooms": (False, _strs(64)),
        "inbox": (False, lambda v: v is None or isinstance(v, bool)),
    },
    UNSUB: {"id": (True, _str)},
    ACK: {"sub": (True, _str), "upto": (True, _pos)},
    OPS: {"id": (True, _str), "ops": (True, _list)},
    SNAP: {"id": (True, _str), "streams": (False, _strs(256)), "prefixes": (False, _strs(64))},
    JOIN: {"room": (True, _str)},
    LEAVE: {"room": (True, _str)},
    SAY: {"room": (True, _str), "data": (False, _any), "id": (False, _opt_str)},
    DM: {"to": (True, _str), "data": (False, _any), "id": (False, _opt_str)},
    PRESENCE: {"room": (True, _str), "state": (False, _opt_dict), "user": (False, _opt_str),
               "event": (False, _opt_str)},
    COMMAND: {"type": (False, _any)},
    AUTH: {"token": (True, lambda v: isinstance(v, str) and 0 < len(v) <= TOKEN_MAX), "id": (False, _opt_str)},
    WELCOME: {"session": (True, _str), "tenant": (True, _str), "user": (True, _str), "head": (True, _pos)},
    PONG: {"id": (False, _any)},
    EVENTS: {"sub": (True, _str), "events": (True, _list), "next": (True, _pos), "head": (False, _opt_pos),
             "prev": (False, _opt_pos)},
    REFRESH: {"sub": (True, _str), "head": (True, _pos), "reason": (False, _opt_str)},
    OPACKS: {"id": (True, _str), "results": (True, _list)},
    SNAPSHOT: {"id": (True, _str), "index": (True, _pos), "total": (True, _pos), "checksum": (True, _str),
               "data": (True, lambda v: isinstance(v, (bytes, bytearray)))},
    JOINED: {"room": (True, _str)},
    LEFT: {"room": (True, _str)},
    MSG: {"from": (True, _str), "data": (False, _any), "pos": (False, _opt_pos)},
    SENT: {"pos": (True, _pos), "id": (False, _opt_str)},
    CONFLICT: {"conflict": (True, _dict)},
    WARN: {"code": (True, _str)},
    ERROR: {"code": (True, _str)},
    BYE: {"code": (True, _str)},
    AUTHED: {"exp": (True, _pos), "id": (False, _opt_str)},
    PUBLISH: {"id": (True, _str), "stream": (True, _str), "events": (True, lambda v: isinstance(v, list) and
                                                                      0 < len(v) <= 1000),
              "expected_version": (False, _opt_pos), "key": (False, _opt_str)},
    CONSUME: {"id": (True, _str), "group": (False, _opt_str), "kind": (False, _opt_str),
              "filter": (False, _opt_dict), "credits": (False, lambda v: v is None or _pos(v) and v <= CREDITS_MAX)},
    CREDIT: {"id": (True, _str), "n": (True, lambda v: _pos(v) and 0 < v <= CREDITS_MAX)},
    DACK: {"id": (True, _str), "ids": (True, _ids)},
    DNACK: {"id": (True, _str), "ids": (True, _ids), "reason": (False, _opt_str_max(2000)),
            "trace": (False, _opt_str_max(16_000)),
            "delay_s": (False, lambda v: v is None or _number(v) and 0 <= v <= 3600)},
    EXTEND: {"id": (True, _str), "ids": (True, _ids),
             "lease_s": (False, lambda v: v is None or _number(v) and 0 < v)},
    UNCONSUME: {"id": (True, _str)},
    PUBLISHED: {"id": (True, _str)},
    CONSUMING: {"id": (True, _str), "session": (True, _str)},
    DELIVERIES: {"id": (True, _str), "deliveries": (True, _list)},
    SETTLED: {"id": (True, _str)},
    CONSUMER_CLOSED: {"id": (True, _str)},
}
CLIENT_TYPES = frozenset({HELLO, PING, SUB, UNSUB, ACK, OPS, SNAP, JOIN, LEAVE, SAY, DM, PRESENCE, COMMAND, AUTH,
                          PUBLISH, CONSUME, CREDIT, DACK, DNACK, EXTEND, UNCONSUME})
BUS_TYPES = frozenset({PUBLISH, CONSUME, CREDIT, DACK, DNACK, EXTEND, UNCONSUME})
SERVER_TYPES = frozenset(SCHEMAS) - CLIENT_TYPES | {PRESENCE}
# Messages the server sends at once, bypassing the outgoing batching window.
LATENCY_CRITICAL = frozenset({PONG, OPACKS, ERROR, WARN, BYE, WELCOME, REFRESH, PRESENCE, MSG, SENT, AUTHED,
                              PUBLISHED, CONSUMING, DELIVERIES, SETTLED, CONSUMER_CLOSED})


def validate(msg: Any, *, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """Check a decoded message against its schema; returns it or raises ProtocolError."""
    if not isinstance(msg, dict):
        raise InvalidMessage("a message must be a map")
    t = msg.get("t")
    if not isinstance(t, str) or t not in SCHEMAS or (allowed is not None and t not in allowed):
        raise UnknownMessage(f"unknown message type {str(t)[:40]!r}")
    for name, (required, check) in SCHEMAS[t].items():
        if name not in msg:
            if required:
                raise InvalidMessage(f"{t}: missing field {name!r}", field=name)
            continue
        if not check(msg[name]):
            raise InvalidMessage(f"{t}: invalid field {name!r}", field=name)
    return msg


def _to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {B64: base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(B64), str):
            try:
                return base64.b64decode(value[B64], validate=True)
            except (binascii.Error, ValueError) as e:
                raise InvalidMessage("bad base64 in $b64") from e
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# Public names for the JSON form of msgpack values (bytes as ``{"$b64": ...}``), which
# other JSON surfaces reuse (the REST snapshot chunks: engine/syncdata.py).
to_json_value = _to_json
from_json_value = _from_json


def encode_frame(msg: dict[str, Any], subprotocol: str = SUBPROTOCOL_MSGPACK) -> bytes | str:
    """bytes for a binary frame (msgpack) or str for a text frame (JSON)."""
    if subprotocol == SUBPROTOCOL_JSON:
        return json.dumps(_to_json(msg), separators=(",", ":"), ensure_ascii=False)
    return msgpack.packb(msg, use_bin_type=True)


def decode_frame(
    frame: bytes | str, subprotocol: str = SUBPROTOCOL_MSGPACK, *, allowed: frozenset[str] | None = None
) -> dict[str, Any]:
    """A validated message from one frame, or ProtocolError. Binary frames are msgpack
    and text frames JSON, whatever the subprotocol (a debugging client may mix)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        if isinstance(frame, str):
            msg = _from_json(json.loads(frame))
        else:
            msg = msgpack.unpackb(
                frame, raw=False, strict_map_key=False,
                max_array_len=100_000, max_map_len=100_000,
            )
    except ProtocolError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as e:
        raise InvalidMessage(f"undecodable frame: {type(e).__name__}") from e
    except Exception as e:  # msgpack raises a few more exotic errors on hostile input
        raise InvalidMessage(f"undecodable frame: {type(e).__name__}") from e
    return validate(msg, allowed=allowed)


def message(t: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, **fields}
