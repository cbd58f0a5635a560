"""The structure of a Yjs (v1) update, decoded in pure Python: which structs it holds
(client, clock, length, the ids each one depends on, where its bytes are) and its
delete set. Nothing of the content is kept; strings are only measured.

This is what the engine needs to decide, without applying an update, whether it is
ready to integrate (:mod:`engine.ypending`), whether it brings anything new
(:mod:`engine.ynews`), and to cut it into pieces that integrate on their own (each
struct's bytes are self-contained in the v1 encoding; a run of consecutive structs
of one client is re-framed by a new header).

The v1 layout, as yrs (pycrdt's Rust core) reads it::

    update      = var(clients) { var(structs) var(client) var(clock) struct* }  delete_set
    struct      = info:u8 ...           (info 0: GC var(len); info 10: Skip var(len))
    item        = info [origin:id] [right_origin:id]
                  [parent: var(1) string | var(0) id]   (only when neither origin is set)
                  [parent_sub: string]                  (same condition, info & 0x20)
                  content (by info & 0x0F)
    delete_set  = var(clients) { var(client) var(ranges) { var(clock) var(len) }* }

Lengths count UTF-16 code units for strings (as Yjs does), 1 for embeds, formats,
types, binaries and subdocuments, the number of values for ``Any`` content.

:func:`parse_update` raises :class:`Unparsed` on anything it does not model (and
on malformed bytes): the caller then asks yrs, which has the last word on what
decodes (see ``Document``). It never raises anything else, never loops without
consuming bytes, and does no work beyond linear in the input.
"""
from __future__ import annotations

import re
from typing import NamedTuple

# Struct kinds
GC = 0  # a garbage-collected range: no content, no dependencies, deleted
DELETED = 1  # an item whose content was deleted (ContentDeleted): deleted
ITEM = 2  # any other item
SKIP = 3  # a hole in a merged update: no data

_U32 = 0xFFFFFFFF  # yrs reads clocks, lengths and counts as u32
_U64 = 0xFFFFFFFFFFFFFFFF
_ANY_DEPTH_MAX = 64
_KNOWN_TYPE_REFS = frozenset((0, 1, 2, 4, 5, 6, 9, 15))  # 3 (XmlElement) reads a key too

# A client id is kept as its var-uint encoding (the bytes as they appear in updates and
# state vectors; canonical: no trailing zero groups), not decoded: it is only ever
# compared, hashed and written back, and decoding 7-byte ids was the cost of parsing.
ClientKey = bytes
_CLIENT = re.compile(rb"[\x00-\x7f]|[\x80-\xff]{1,9}[\x01-\x7f]")

# A struct: (clock, length, kind, deps, start, end). ``deps`` is a tuple of
# (client, clock) ids the struct needs present before it can integrate: its origin,
# right origin and parent (when the parent is an item). ``start:end`` are its bytes
# in the update.
Struct = tuple[int, int, int, tuple[tuple[ClientKey, int], ...], int, int]


class Unparsed(Exception):
    """These bytes are malformed or use something this decoder does not model."""


class Run(NamedTuple):
    """The structs of one client in an update, in clock order (consecutive clocks)."""

    client: ClientKey
    structs: list[Struct]


class ParsedUpdate(NamedTuple):
    runs: list[Run]
    # The delete set: client -> [(clock, length)] as read (length > 0 only).
    deletes: dict[ClientKey, list[tuple[int, int]]]
    # Where the delete set starts in the update.
    ds_start: int


_NO_DEPS: tuple[tuple[ClientKey, int], ...] = ()
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (a third the cost)

# The usual keystroke: one client, one string item with an origin and/or a right
# origin, a string shorter than 128 bytes. Matched in one go.
_C = rb"([\x00-\x7f]|[\x80-\xff]{1,9}[\x01-\x7f])"
_K = rb"([\x00-\x7f]|[\x80-\xff]{1,4}[\x00-\x7f])"
_KEYSTROKE = re.compile(
    rb"\x01\x01" + _C + _K + rb"(?:\x84" + _C + _K + rb"|\xc4" + _C + _K + _C + _K
    + rb"|\x44" + _C + _K + rb")([\x00-\x7f])",
    re.DOTALL,
)


def _client(buf: bytes, p: int) -> tuple[ClientKey, int]:
    m = _CLIENT.match(buf, p)
    if m is None:
        raise Unparsed("bad client id")
    q = m.end()
    return buf[p:q], q


def _id(buf: bytes, p: int) -> tuple[ClientKey, int, int]:
    """An id (client key, clock) at ``p``: (client, clock, where the next field starts)."""
    c, p = _client(buf, p)
    k = buf[p]
    if k >= 0x80:
        k, p = _u32(buf, p)
        return c, k, p
    return c, k, p + 1


def client_key(client: int) -> ClientKey:
    """The key of a client id (its var-uint encoding)."""
    return write_uint(client)


def client_id(key: ClientKey) -> int:
    """The client id of a key."""
    v = 0
    for i, b in enumerate(key):
        v |= (b & 0x7F) << (7 * i)
    return v


def _uint(buf: bytes, p: int) -> tuple[int, int]:
    """A var-uint at ``p`` (up to u64): (value, next position)."""
    v = 0
    shift = 0
    while True:
        b = buf[p]
        p += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            if v > _U64:
                raise Unparsed("var-uint out of range")
            return v, p
        shift += 7
        if shift > 63:
            raise Unparsed("var-uint too long")


def _u32(buf: bytes, p: int) -> tuple[int, int]:
    b = buf[p]
    if b < 0x80:
        return b, p + 1
    v, p = _uint(buf, p)
    if v > _U32:
        raise Unparsed("u32 out of range")
    return v, p


def _skip_bytes(buf: bytes, p: int, end: int) -> int:
    n, p = _u32(buf, p)
    q = p + n
    if q > end:
        raise Unparsed("truncated bytes")
    return q


def _utf16_len(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """A var-string at ``p``: (its length in UTF-16 code units, next position)."""
    n, p = _u32(buf, p)
    q = p + n
    if q > end:
        raise Unparsed("truncated string")
    raw = buf[p:q]
    if raw.isascii():
        return n, q
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unparsed("string is not UTF-8") from e
    # Code points above the BMP take two UTF-16 units.
    return len(s.encode("utf-16-le")) >> 1, q


def _skip_any(buf: bytes, p: int, end: int, depth: int) -> int:
    """Skip one lib0 ``Any`` value."""
    if depth > _ANY_DEPTH_MAX:
        raise Unparsed("Any nested too deep")
    tag = buf[p]
    p += 1
    if tag >= 120:  # 127 undefined, 126 null, 121 false, 120 true; 125 var-int; 122..124 fixed
        if tag == 125:
            q = p
            while buf[p] >= 0x80:
                p += 1
                if p - q > 9:
                    raise Unparsed("var-int too long")
            return p + 1
        if tag == 124:
            p += 4
        elif tag in (123, 122):
            p += 8
        if p > end:
            raise Unparsed("truncated number")
        return p
    if tag == 119:
        return _skip_bytes(buf, p, end)
    if tag == 116:
        return _skip_bytes(buf, p, end)
    if tag == 118:
        n, p = _u32(buf, p)
        if n > end - p:
            raise Unparsed("map longer than its bytes")
        for _ in range(n):
            p = _skip_bytes(buf, p, end)
            p = _skip_any(buf, p, end, depth + 1)
        return p
    if tag == 117:
        n, p = _u32(buf, p)
        if n > end - p:
            raise Unparsed("array longer than its bytes")
        for _ in range(n):
            p = _skip_any(buf, p, end, depth + 1)
        return p
    raise Unparsed(f"unknown Any tag {tag}")


def _content(buf: bytes, p: int, end: int, ref: int) -> tuple[int, int]:
    """Skip an item's content: (its length in clocks, next position)."""
    if ref == 4:  # string
        return _utf16_len(buf, p, end)
    if ref == 8:  # Any values
        n, p = _u32(buf, p)
        if n > end - p:
            raise Unparsed("more values than bytes")
        for _ in range(n):
            p = _skip_any(buf, p, end, 0)
        return n, p
    if ref == 1:  # deleted
        return _u32(buf, p)
    if ref == 7:  # type
        if p >= end:
            raise Unparsed("truncated type")
        tref = buf[p]
        p += 1
        if tref == 3:  # XmlElement: its tag name
            p = _skip_bytes(buf, p, end)
        elif tref not in _KNOWN_TYPE_REFS:
            raise Unparsed(f"type ref {tref}")
        return 1, p
    if ref == 3:  # binary
        return 1, _skip_bytes(buf, p, end)
    if ref == 5:  # embed (JSON text)
        return 1, _skip_bytes(buf, p, end)
    if ref == 6:  # format: key, JSON text
        p = _skip_bytes(buf, p, end)
        return 1, _skip_bytes(buf, p, end)
    if ref == 9:  # subdocument: guid, options
        p = _skip_bytes(buf, p, end)
        return 1, _skip_any(buf, p, end, 0)
    # 2 (JSON: read differently by Yjs and yrs), 11 (move), anything else
    raise Unparsed(f"content ref {ref}")


def _var(b: bytes) -> int:
    if len(b) == 1:
        return b[0]
    v = 0
    for i, x in enumerate(b):
        v |= (x & 0x7F) << (7 * i)
    if v > _U32:
        raise Unparsed("u32 out of range")
    return v


def _keystroke(buf: bytes) -> ParsedUpdate | None:
    m = _KEYSTROKE.match(buf)
    if m is None:
        return None
    client, clock, c1, k1, c2, k2, c3, k3, c4, k4, n = m.groups()
    p = m.end()
    q = p + n[0]
    raw = buf[p:q]
    if len(raw) != n[0]:
        raise Unparsed("truncated string")
    if raw.isascii():
        length = n[0]
    else:
        try:
            length = len(raw.decode("utf-8").encode("utf-16-le")) >> 1
        except UnicodeDecodeError as e:
            raise Unparsed("string is not UTF-8") from e
    if c1 is not None:
        deps: tuple[tuple[ClientKey, int], ...] = (
            (c1, k1[0] if len(k1) == 1 else _var(k1)),
        )
    elif c2 is not None:
        deps = (
            (c2, k2[0] if len(k2) == 1 else _var(k2)),
            (c3, k3[0] if len(k3) == 1 else _var(k3)),
        )
    else:
        deps = ((c4, k4[0] if len(k4) == 1 else _var(k4)),)
    start = clock[0] if len(clock) == 1 else _var(clock)
    if not length:
        return None  # (the general decoder says how)
    if start + length > _U32:
        raise Unparsed("clock out of range")
    struct = (start, length, ITEM, deps, m.end(1) + len(clock), q)
    runs = [_new(Run, (client, [struct]))]
    if len(buf) == q + 1 and buf[q] == 0:
        return _new(ParsedUpdate, (runs, {}, q))
    deletes, p = _delete_set(buf, q, len(buf))
    if p != len(buf):
        raise Unparsed("trailing bytes after the delete set")
    return _new(ParsedUpdate, (runs, deletes, q))


def parse_update(update: bytes) -> ParsedUpdate:
    """Decode the structure of a v1 update; :class:`Unparsed` if this module cannot."""
    try:
        if update[:2] == b"\x01\x01":
            parsed = _keystroke(update)
            if parsed is not None:
                return parsed
        return _parse(update)
    except IndexError as e:
        raise Unparsed("truncated update") from e
    except RecursionError as e:  # (bounded by _ANY_DEPTH_MAX; belt and braces)
        raise Unparsed("nested too deep") from e


def _parse(buf: bytes) -> ParsedUpdate:
    # Var-uints are decoded inline (a call per integer was most of the cost): one byte
    # when below 0x80, else the loop.
    end = len(buf)
    nclients = buf[0]
    p = 1
    if nclients >= 0x80:
        nclients, p = _u32(buf, 0)
    if nclients * 3 > end - p:
        raise Unparsed("more clients than bytes")
    runs: list[Run] = []
    seen: set[ClientKey] = set()
    match = _CLIENT.match
    for _ in range(nclients):
        nstructs = buf[p]
        p += 1
        if nstructs >= 0x80:
            nstructs, p = _u32(buf, p - 1)
        m = match(buf, p)
        if m is None:
            raise Unparsed("bad client id")
        q = m.end()
        client = buf[p:q]
        p = q
        clock = buf[p]
        p += 1
        if clock >= 0x80:
            clock, p = _u32(buf, p - 1)
        if nstructs > end - p:
            raise Unparsed("more structs than bytes")
        if client in seen:
            raise Unparsed("client twice in one update")  # yrs appends, Yjs overwrites
        seen.add(client)
        structs: list[Struct] = []
        for _ in range(nstructs):
            start = p
            info = buf[p]
            p += 1
            if info == 0 or info == 10:
                length = buf[p]
                p += 1
                if length >= 0x80:
                    length, p = _u32(buf, p - 1)
                structs.append((clock, length, GC if info == 0 else SKIP, _NO_DEPS, start, p))
            else:
                deps: tuple[tuple[ClientKey, int], ...] = _NO_DEPS
                if info & 0xC0:
                    if info & 0x80:  # origin
                        c, k, p = _id(buf, p)
                        deps = ((c, k),)
                    if info & 0x40:  # right origin
                        c, k, p = _id(buf, p)
                        deps = (*deps, (c, k))
                else:
                    kind_of_parent, p = _u32(buf, p)
                    if kind_of_parent == 1:
                        p = _skip_bytes(buf, p, end)  # a root type's name
                    else:
                        c, p = _client(buf, p)
                        k, p = _u32(buf, p)
                        deps = ((c, k),)
                    if info & 0x20:
                        p = _skip_bytes(buf, p, end)  # parent_sub (map key)
                ref = info & 0x0F
                if ref == 4:  # a string, the usual case
                    n = buf[p]
                    p += 1
                    if n >= 0x80:
                        n, p = _u32(buf, p - 1)
                    q = p + n
                    if q > end:
                        raise Unparsed("truncated string")
                    raw = buf[p:q]
                    p = q
                    if raw.isascii():
                        length = n
                    else:
                        try:
                            length = len(raw.decode("utf-8").encode("utf-16-le")) >> 1
                        except UnicodeDecodeError as e:
                            raise Unparsed("string is not UTF-8") from e
                else:
                    length, p = _content(buf, p, end, ref)
                if length == 0:
                    # yrs drops an empty item (the clock does not move): no dependencies.
                    structs.append((clock, 0, ITEM, _NO_DEPS, start, p))
                    continue
                structs.append((clock, length, DELETED if ref == 1 else ITEM, deps, start, p))
            clock += length
            if clock > _U32:
                raise Unparsed("clock out of range")
        if p > end:
            raise Unparsed("truncated structs")
        runs.append(_new(Run, (client, structs)))
    ds_start = p
    if p == end - 1 and buf[p] == 0:
        return _new(ParsedUpdate, (runs, {}, ds_start))
    deletes, p = _delete_set(buf, p, end)
    if p != end:
        raise Unparsed("trailing bytes after the delete set")
    return _new(ParsedUpdate, (runs, deletes, ds_start))


def _delete_set(
    buf: bytes, p: int, end: int
) -> tuple[dict[ClientKey, list[tuple[int, int]]], int]:
    deletes: dict[ClientKey, list[tuple[int, int]]] = {}
    nds, p = _u32(buf, p)
    if nds * 2 > end - p:
        raise Unparsed("more delete-set clients than bytes")
    for _ in range(nds):
        client, p = _client(buf, p)
        nranges, p = _u32(buf, p)
        if nranges * 2 > end - p:
            raise Unparsed("more delete ranges than bytes")
        ranges: list[tuple[int, int]] = []
        append = ranges.append
        for _ in range(nranges):
            clock = buf[p]
            p += 1
            if clock >= 0x80:  # (inline: a call per integer doubled the cost)
                clock &= 0x7F
                shift = 7
                while True:
                    b = buf[p]
                    p += 1
                    clock |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 28:
                        raise Unparsed("u32 too long")
            length = buf[p]
            p += 1
            if length >= 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    b = buf[p]
                    p += 1
                    length |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 28:
                        raise Unparsed("u32 too long")
            if length:
                if clock + length > _U32:
                    raise Unparsed("delete range out of range")
                append((clock, length))
        deletes[client] = ranges  # yrs keeps the last entry of a client
    return deletes, p


def parse_delete_set(data: bytes, start: int = 0) -> dict[ClientKey, list[tuple[int, int]]]:
    """The delete set encoded from ``start`` to the end of ``data``: client ->
    [(clock, length)] (zero lengths left out); :class:`Unparsed` if malformed."""
    try:
        deletes, p = _delete_set(data, start, len(data))
    except IndexError as e:
        raise Unparsed("truncated delete set") from e
    if p != len(data):
        raise Unparsed("trailing bytes after the delete set")
    return deletes


_SINGLE_DELETE = re.compile(rb"\x00\x01" + _C + rb"\x01" + _K + _K + rb"\Z", re.DOTALL)


def single_delete(update: bytes) -> tuple[ClientKey, int, int] | None:
    """(client, clock, length) when ``update`` is no structs and one delete range."""
    m = _SINGLE_DELETE.match(update)
    if m is None:
        return None
    client, clock, length = m.groups()
    return (
        client,
        clock[0] if len(clock) == 1 else _var(clock),
        length[0] if len(length) == 1 else _var(length),
    )


def parse_state_vector(data: bytes) -> dict[ClientKey, int]:
    """A state vector's (client -> clock); :class:`Unparsed` if malformed."""
    try:
        end = len(data)
        n, p = _u32(data, 0)
        if n * 2 > end - p:
            raise Unparsed("more clients than bytes")
        out: dict[ClientKey, int] = {}
        for _ in range(n):
            client, p = _client(data, p)
            clock, p = _u32(data, p)
            out[client] = clock
    except IndexError as e:
        raise Unparsed("truncated state vector") from e
    if p != end:
        raise Unparsed("trailing bytes after the state vector")
    return out


# -- writing pieces -----------------------------------------------------------------


def write_uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def struct_piece(
    src: bytes, client: ClientKey, structs: list[Struct], lo: int, hi: int, base: int = 0
) -> bytes:
    """An update holding structs ``lo:hi`` of one client's run (consecutive) and an
    empty delete set; the structs' byte offsets are into ``src`` shifted by ``base``."""
    first = structs[lo]
    return b"".join((
        b"\x01", write_uint(hi - lo), client, write_uint(first[0]),
        src[first[4] - base : structs[hi - 1][5] - base], b"\x00",
    ))


def delete_piece(deletes: dict[ClientKey, list[tuple[int, int]]]) -> bytes:
    """An update with no structs and this delete set (ranges sorted per client)."""
    parts = [b"\x00", write_uint(len(deletes))]
    for client, ranges in deletes.items():
        parts.append(client)
        parts.append(write_uint(len(ranges)))
        for clock, length in ranges:
            parts.append(write_uint(clock))
            parts.append(write_uint(length))
    return b"".join(parts)
