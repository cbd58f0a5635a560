"""lib0 binary primitives used by the Yjs wire formats: var-uint, var-bytes, var-string.

lib0 (the encoding library under Yjs) writes unsigned integers 7 bits per byte,
least significant group first, high bit set on every byte but the last; byte
strings and UTF-8 strings are a var-uint length followed by the bytes.

:class:`Reader` is the only decoder. Every way it can fail on peer input raises
:class:`~engine.errors.ProtocolError` (never IndexError, never a hang): lengths
are checked against the bytes actually left, and integers are capped at
``2**53 - 1`` because JavaScript peers cannot represent more.
"""
from __future__ import annotations

from .errors import ProtocolError

VAR_UINT_MAX = 2**53 - 1  # Number.MAX_SAFE_INTEGER: what a JS peer can produce or read
_VAR_UINT_BYTES_MAX = 8  # 8 * 7 = 56 bits >= 53; more bytes can only be junk


def write_var_uint(value: int) -> bytes:
    if value < 0 or value > VAR_UINT_MAX:
        raise ValueError(f"var-uint out of range: {value}")
    if value < 0x80:  # the common case (types, small lengths) without a loop
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def write_var_bytes(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def write_var_string(text: str) -> bytes:
    # The length is in UTF-8 bytes, as lib0 writes it (not in characters).
    return write_var_bytes(text.encode("utf-8"))


class Reader:
    """A bounded cursor over one received frame."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, data: bytes) -> None:
        self._buf = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def read_var_uint(self, what: str = "var-uint") -> int:
        buf, pos, end = self._buf, self._pos, len(self._buf)
        value = 0
        shift = 0
        for _ in range(_VAR_UINT_BYTES_MAX):
            if pos >= end:
                raise ProtocolError(f"truncated {what}", reason="truncated", field=what)
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value > VAR_UINT_MAX:
                    raise ProtocolError(f"{what} out of range", reason="int_range", field=what)
                self._pos = pos
                return value
            shift += 7
        raise ProtocolError(f"{what} too long", reason="int_range", field=what)

    def read_var_bytes(self, max_len: int, what: str = "bytes") -> bytes:
        length = self.read_var_uint(what)
        if length > max_len:
            raise ProtocolError(
                f"{what} of {length} bytes exceeds {max_len}", reason="too_large", field=what
            )
        if length > self.remaining:
            raise ProtocolError(f"truncated {what}", reason="truncated", field=what)
        start = self._pos
        self._pos = start + length
        return self._buf[start : self._pos]

    def read_var_string(self, max_len: int, what: str = "string") -> str:
        raw = self.read_var_bytes(max_len, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{what} is not UTF-8", reason="bad_utf8", field=what) from e

    def expect_end(self, what: str = "message") -> None:
        """Refuse trailing bytes: a frame holds exactly one message."""
        if self._pos != len(self._buf):
            raise ProtocolError(
                f"{self.remaining} trailing bytes after {what}", reason="trailing_bytes"
            )
