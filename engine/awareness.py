"""Yjs awareness (presence): the update codec and a per-document registry.

Wire format of an awareness update (y-protocols ``awareness.js``)::

    var-uint  number of entries
    entries:  var-uint client id, var-uint clock, var-string JSON state ("null" = gone)

Rules the registry follows (those of y-protocols ``applyAwarenessUpdate``, plus
binding to connections, which the y-websocket server does ad hoc):

- an entry is accepted when its clock is newer than the one known for that client,
  or when it has the same clock and removes a state that is present; anything
  else is stale and ignored;
- a removed client keeps its last clock for ``outdated_after_ms`` so a stale
  update arriving late cannot bring it back;
- the first connection to send a client id owns it until it disconnects; entries
  for a client id owned by another connection are ignored (no spoofing of
  someone else's cursor); a connection owns at most ``clients_per_connection_max``
  client ids;
- on disconnect every state the connection owns is removed, and the removal is
  returned as an update to broadcast (state null, same clock, as y-websocket does:
  peers accept "same clock, null state" as a removal).

Times are passed in (``now_ms``); nothing here reads a clock.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import ProtocolError
from .lib0 import Reader, write_var_string, write_var_uint

AWARENESS_ENTRIES_MAX = 1024
AWARENESS_STATE_BYTES_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: Any  # a JSON value (an object in practice); None means "client gone"


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a JS peer would fail on them.
    raise ValueError(f"not JSON: {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def encode_state(state: Any) -> str:
    # Same text as JS JSON.stringify: compact, non-ASCII kept as is.
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_awareness_update(entries: Iterable[AwarenessEntry]) -> bytes:
    entries = list(entries)
    parts = [write_var_uint(len(entries))]
    for e in entries:
        parts.append(write_var_uint(e.client_id))
        parts.append(write_var_uint(e.clock))
        parts.append(write_var_string(encode_state(e.state)))
    return b"".join(parts)


def decode_awareness_update(
    data: bytes,
    *,
    entries_max: int = AWARENESS_ENTRIES_MAX,
    state_bytes_max: int = AWARENESS_STATE_BYTES_MAX,
) -> tuple[AwarenessEntry, ...]:
    """Decode an awareness update, or raise :class:`ProtocolError`."""
    reader = Reader(data)
    count = reader.read_var_uint("awareness entry count")
    # An entry takes at least 3 bytes (id, clock, empty-string length).
    if count > entries_max or count * 3 > reader.remaining:
        raise ProtocolError(f"bad awareness entry count {count}", reason="too_large")
    entries = []
    for _ in range(count):
        client_id = reader.read_var_uint("client id")
        clock = reader.read_var_uint("clock")
        text = reader.read_var_string(state_bytes_max, "awareness state")
        try:
            state = _decoder.decode(text)
        except (ValueError, RecursionError) as e:
            raise ProtocolError("awareness state is not JSON", reason="bad_json") from e
        entries.append(AwarenessEntry(client_id, clock, state))
    reader.expect_end("awareness update")
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class AwarenessChange:
    """What one call changed. ``update`` holds only the accepted entries, ready to
    relay to the other connections; None when nothing was accepted."""

    added: tuple[int, ...] = ()
    updated: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    update: bytes | None = None

    @property
    def changed(self) -> bool:
        return self.update is not None


NO_CHANGE = AwarenessChange()


@dataclass(slots=True)
class _Client:
    clock: int
    state: Any
    connection: str | None
    user: str
    updated_ms: int


@dataclass(slots=True)
class _Delta:
    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    accepted: list[AwarenessEntry] = field(default_factory=list)

    def result(self) -> AwarenessChange:
        if not self.accepted:
            return NO_CHANGE
        return AwarenessChange(
            tuple(self.added),
            tuple(self.updated),
            tuple(self.removed),
            encode_awareness_update(self.accepted),
        )


class AwarenessRegistry:
    """Awareness states of one document, keyed by Yjs client id (see module rules)."""

    def __init__(
        self, *, outdated_after_ms: int = 30_000, clients_per_connection_max: int = 16
    ) -> None:
        self.outdated_after_ms = outdated_after_ms
        self.clients_per_connection_max = clients_per_connection_max
        self._clients: dict[int, _Client] = {}
        self._by_connection: dict[str, set[int]] = {}

    # -- reading -------------------------------------------------------------

    @property
    def states(self) -> dict[int, Any]:
        """Client id → state, for clients that currently have one."""
        return {cid: c.state for cid, c in self._clients.items() if c.state is not None}

    def clock_of(self, client_id: int) -> int | None:
        c = self._clients.get(client_id)
        return None if c is None else c.clock

    def owner_of(self, client_id: int) -> tuple[str | None, str] | None:
        """(connection, user) that owns a client id, or None if unknown."""
        c = self._clients.get(client_id)
        return None if c is None else (c.connection, c.user)

    def clients_of(self, connection: str) -> frozenset[int]:
        return frozenset(self._by_connection.get(connection, ()))

    def encode(self, client_ids: Iterable[int] | None = None) -> bytes:
        """The current states as one update (for a late joiner: every present state)."""
        if client_ids is None:
            client_ids = [cid for cid, c in self._clients.items() if c.state is not None]
        entries = []
        for cid in client_ids:
            c = self._clients.get(cid)
            if c is not None:
                entries.append(AwarenessEntry(cid, c.clock, c.state))
        return encode_awareness_update(entries)

    # -- changing ------------------------------------------------------------

    def apply(
        self,
        update: bytes | Iterable[AwarenessEntry],
        *,
        connection: str,
        user: str = "",
        now_ms: int,
    ) -> AwarenessChange:
        """Apply a peer's awareness update received on ``connection`` (raises
        :class:`ProtocolError` if the bytes do not decode)."""
        entries = decode_awareness_update(update) if isinstance(update, bytes) else update
        owned = self._by_connection.setdefault(connection, set())
        delta = _Delta()
        for e in entries:
            known = self._clients.get(e.client_id)
            if known is not None and known.connection not in (None, connection):
                continue  # owned by another live connection
            if known is None or known.connection is None:
                if len(owned) >= self.clients_per_connection_max:
                    continue
            if known is not None and not (
                known.clock < e.clock
                or (known.clock == e.clock and e.state is None and known.state is not None)
            ):
                continue  # stale
            if known is None and e.state is None:
                # Removing a client we never saw: remember the clock against stale
                # re-adds, but there is nothing to relay.
                self._clients[e.client_id] = _Client(e.clock, None, None, user, now_ms)
                continue
            if known is None:
                known = _Client(e.clock, None, connection, user, now_ms)
                self._clients[e.client_id] = known
            previous = known.state
            known.clock, known.state = e.clock, e.state
            known.connection, known.user, known.updated_ms = connection, user, now_ms
            owned.add(e.client_id)
            if e.state is None:
                if previous is not None:
                    delta.removed.append(e.client_id)
            elif previous is None:
                delta.added.append(e.client_id)
            else:
                delta.updated.append(e.client_id)
            delta.accepted.append(e)
        if not owned:
            del self._by_connection[connection]
        return delta.result()

    def disconnect(self, connection: str, *, now_ms: int) -> AwarenessChange:
        """Remove every state owned by ``connection`` and release its client ids."""
        delta = _Delta()
        for cid in sorted(self._by_connection.pop(connection, ())):
            c = self._clients[cid]
            c.connection, c.updated_ms = None, now_ms
            if c.state is not None:
                c.state = None
                delta.removed.append(cid)
                delta.accepted.append(AwarenessEntry(cid, c.clock, None))
        return delta.result()

    def expire(self, *, now_ms: int) -> AwarenessChange:
        """Remove states not renewed for ``outdated_after_ms`` (Yjs clients renew every
        15 s), and forget clocks of clients removed that long ago."""
        delta = _Delta()
        horizon = now_ms - self.outdated_after_ms
        for cid, c in list(self._clients.items()):
            if c.updated_ms > horizon:
                continue
            if c.state is not None:
                c.state, c.updated_ms = None, now_ms
                delta.removed.append(cid)
                delta.accepted.append(AwarenessEntry(cid, c.clock, None))
            elif c.connection is None:
                del self._clients[cid]
        return delta.result()
