"""``LoopbackServer``: a small synchronous server core speaking docs/protocol.md on an
in-memory log, for the in-memory transport (tests, simulations, examples).

It reconciles ops with ``engine.records.reconcile`` (the gateway's own decision code),
keeps a log of wire events with positions, streams them to subscriptions, answers
``refresh`` when a subscriber is more than ``max_behind`` events behind, and serves
snapshots in checksummed chunks. Fault hooks for tests: ``corrupt_snapshots`` (how
many next snapshots get a flipped byte) and ``lose_opacks`` (how many next op batches
are committed but never answered).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from engine import protocol as P
from engine.events import Actor
from engine.records import CollectionPolicy, RecordsState, ResolutionConfig, reconcile, record_snapshot
from engine.records.ops import op_from_wire
from engine.syncdata import chunk_snapshot, snapshot_checksum

from .memory import Out

_ids = itertools.count(1)


def open_config(**collections: CollectionPolicy) -> ResolutionConfig:
    """Like the gateway's default (every collection, every field LWW), plus ``collections``."""
    return ResolutionConfig(collections, default_collection=CollectionPolicy())


@dataclass
class _Conn:
    user: str
    client: str
    subs: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)  # id -> (cursor, prefixes)
    rooms: set[str] = field(default_factory=set)


class LoopbackServer:
    def __init__(self, config: ResolutionConfig | None = None, *, tenant: str = "acme", max_behind: int = 10_000,
                 chunk_bytes: int = 64 * 1024) -> None:
        if config is None:
            config = open_config()
        self.config = config
        self.tenant = tenant
        self.max_behind = max_behind
        self.chunk_bytes = chunk_bytes
        self.records = RecordsState()
        self.log: list[dict] = []  # wire events; log[i] has position i + 1
        self.versions: dict[str, int] = {}
        self.conns: dict[str, _Conn] = {}
        self.presence: dict[str, dict[str, Any]] = {}  # room -> user -> state
        self.corrupt_snapshots = 0
        self.lose_opacks = 0
        self.committed_batches = 0

    @property
    def head(self) -> int:
        return len(self.log)

    # -- FrameServer ----------------------------------------------------------
    def open(self, conn: str, *, user: str, client: str, now_ms: int) -> Out:
        self.conns[conn] = _Conn(user, client or conn)
        return [(conn, P.message(P.WELCOME, session=conn, tenant=self.tenant, user=user, head=self.head,
                                 heartbeat_s=30, stale_s=90))]

    def close(self, conn: str, now_ms: int) -> Out:
        c = self.conns.pop(conn, None)
        out: Out = []
        if c is not None:
            for room in c.rooms:
                if not any(room in o.rooms and o.user == c.user for o in self.conns.values()):
                    self.presence.get(room, {}).pop(c.user, None)
                    out += self._to_room(room, P.message(P.PRESENCE, room=room, user=c.user, event="left"),
                                         skip=conn)
        return out

    def receive(self, conn: str, msg: dict, now_ms: int) -> Out:
        c = self.conns.get(conn)
        if c is None:
            return []
        t = msg["t"]
        if t == P.HELLO:
            if msg.get("client"):
                c.client = msg["client"]
            return []
        if t == P.PING:
            return [(conn, P.message(P.PONG, id=msg.get("id"), time_us=now_ms * 1000))]
        if t == P.SUB:
            prefixes = tuple(msg.get("prefixes") or ()) + tuple(msg.get("streams") or ())
            after = msg.get("after") or 0
            behind = sum(1 for e in self.log[after:] if _match(e, prefixes))
            if behind > self.max_behind:
                return [(conn, P.message(P.REFRESH, sub=msg["id"], head=self.head, reason="too_far_behind"))]
            c.subs[msg["id"]] = (after, prefixes)
            return self._push(conn)
        if t == P.UNSUB:
            c.subs.pop(msg["id"], None)
            return []
        if t == P.ACK:
            return []
        if t == P.OPS:
            return self._ops(conn, c, msg, now_ms)
        if t == P.SNAP:
            return self._snap(conn, msg)
        if t == P.JOIN:
            room = msg["room"]
            c.rooms.add(room)
            members = self.presence.setdefault(room, {})
            first = c.user not in members
            members.setdefault(c.user, None)
            out: Out = [(conn, P.message(P.JOINED, room=room,
                                         members=[{"user": u, "state": s} for u, s in sorted(members.items(),
                                                  key=lambda kv: kv[0])]))]
            if first:
                out += self._to_room(room, P.message(P.PRESENCE, room=room, user=c.user, event="joined"), skip=conn)
            return out
        if t == P.LEAVE:
            room = msg["room"]
            c.rooms.discard(room)
            self.presence.get(room, {}).pop(c.user, None)
            return [(conn, P.message(P.LEFT, room=room))] + self._to_room(
                room, P.message(P.PRESENCE, room=room, user=c.user, event="left"), skip=conn)
        if t == P.PRESENCE:
            room = msg["room"]
            if room not in c.rooms:
                return [(conn, P.message(P.ERROR, code="forbidden", message="join the room first"))]
            self.presence.setdefault(room, {})[c.user] = msg.get("state")
            return self._to_room(room, P.message(P.PRESENCE, room=room, user=c.user, state=msg.get("state")),
                                 skip=conn)
        if t == P.SAY:
            return self._to_room(msg["room"], P.message(P.MSG, room=msg["room"], data=msg.get("data"),
                                                        **{"from": c.user}), skip=conn)
        if t == P.COMMAND:
            return [(conn, P.message(P.ERROR, code="websocket_forbidden", message="critical commands are REST only"))]
        return []

    # -- internals --------------------------------------------------------------
    def _ops(self, conn: str, c: _Conn, msg: dict, now_ms: int) -> Out:
        ops, bad = [], []
        for raw in msg["ops"]:
            try:
                ops.append(op_from_wire(raw))
            except Exception as e:  # noqa: BLE001 - a malformed op is rejected, not fatal
                bad.append((raw, e))
        if bad:
            return [(conn, P.message(P.ERROR, code="invalid", message=str(bad[0][1]), ref=msg["id"]))]
        result = reconcile(self.records, ops, self.config, now_ms=now_ms)
        self.records = result.state
        for se in result.events:
            ev = se.event
            version = self.versions.get(se.stream, 0) + 1
            self.versions[se.stream] = version
            actor = ev.actor if isinstance(ev.actor, Actor) else Actor()
            self.log.append({
                "id": f"ev{next(_ids)}", "tenant": self.tenant, "stream": se.stream, "version": version,
                "position": len(self.log) + 1, "type": ev.type, "schema": ev.schema,
                "time": "1970-01-01T00:00:00Z", "actor": {"user": actor.user, "client": actor.client},
                "clock": dict(ev.clock), "data": ev.data, "meta": dict(ev.meta), "retention": ev.retention.value,
            })
        self.committed_batches += 1
        out: Out = []
        if self.lose_opacks > 0:
            self.lose_opacks -= 1  # committed, but the answer is lost on the way
        else:
            out.append((conn, P.message(P.OPACKS, id=msg["id"], results=[o.to_wire() for o in result.outcomes])))
        for other in list(self.conns):
            out += self._push(other)
        return out

    def _push(self, conn: str) -> Out:
        c = self.conns[conn]
        out: Out = []
        for sub_id, (cursor, prefixes) in list(c.subs.items()):
            if cursor >= self.head:
                continue
            events = [e for e in self.log[cursor:] if _match(e, prefixes)]
            c.subs[sub_id] = (self.head, prefixes)
            for i in range(0, len(events), 500):
                part = events[i:i + 500]
                nxt = self.head if i + 500 >= len(events) else part[-1]["position"]
                out.append((conn, P.message(P.EVENTS, sub=sub_id, events=part, next=nxt, head=self.head)))
            if not events:
                out.append((conn, P.message(P.EVENTS, sub=sub_id, events=[], next=self.head, head=self.head)))
        return out

    def _snap(self, conn: str, msg: dict) -> Out:
        prefixes = tuple(msg.get("prefixes") or ()) + tuple(msg.get("streams") or ())
        content = {}
        for stream, rec in self.records.records.items():
            if prefixes and not stream.startswith(prefixes):
                continue
            content[stream] = record_snapshot(rec, self.versions.get(stream, 0), self.config.registry)
        position = self.head
        checksum = snapshot_checksum(position, content)
        chunks = chunk_snapshot(position, content, checksum, self.chunk_bytes)
        out: Out = []
        for ch in chunks:
            data = ch.data
            if self.corrupt_snapshots > 0 and ch.index == 0:
                data = bytes([data[0]]) + bytes([data[1] ^ 0x01]) + data[2:] if len(data) > 2 else data
            out.append((conn, P.message(P.SNAPSHOT, id=msg["id"], index=ch.index, total=ch.total,
                                        checksum=ch.checksum, data=data, position=position)))
        if self.corrupt_snapshots > 0:
            self.corrupt_snapshots -= 1
        return out

    def _to_room(self, room: str, msg: dict, *, skip: str | None = None) -> Out:
        return [(cid, msg) for cid, c in self.conns.items() if room in c.rooms and cid != skip]


def _match(event: dict, prefixes: tuple[str, ...]) -> bool:
    return not prefixes or event["stream"].startswith(prefixes)
