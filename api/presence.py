"""Room membership and presence (interaction class A).

Membership belongs to (tenant, user, client), not to a connection: it survives a
reconnect. When the last connection of a member goes away, the membership is kept
for ``grace_s``; a reconnect within it re-attaches silently, otherwise the member
leaves (and the leave is recorded in the log like an explicit one).

Ephemeral state (typing, cursor) lives per connection with a TTL and is never
written to the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MemberKey = tuple[str, str, str]  # (tenant, user, client)


@dataclass(slots=True)
class Member:
    tenant: str
    user: str
    client: str
    rooms: set[str] = field(default_factory=set)
    connections: set[str] = field(default_factory=set)
    detached_at: float | None = None


@dataclass(slots=True)
class Ephemeral:
    user: str
    conn: str
    state: Any
    expires_at: float


class PresenceRegistry:
    def __init__(self, *, ttl_s: float, grace_s: float) -> None:
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self.members: dict[MemberKey, Member] = {}
        self.rooms: dict[tuple[str, str], set[MemberKey]] = {}
        self.ephemeral: dict[tuple[str, str], dict[str, Ephemeral]] = {}

    def attach(self, key: MemberKey, conn: str) -> set[str]:
        """A connection of this member opened; return the rooms it is (still) in."""
        m = self.members.get(key)
        if m is None:
            m = self.members[key] = Member(*key)
        m.connections.add(conn)
        m.detached_at = None
        return set(m.rooms)

    def detach(self, key: MemberKey, conn: str, now: float) -> None:
        m = self.members.get(key)
        if m is None:
            return
        m.connections.discard(conn)
        if not m.connections:
            if m.rooms:
                m.detached_at = now
            else:
                del self.members[key]
        for states in self.ephemeral.values():
            states.pop(conn, None)

    def join(self, key: MemberKey, room: str) -> bool:
        """True when the member was not in the room before."""
        m = self.members.setdefault(key, Member(*key))
        if room in m.rooms:
            return False
        m.rooms.add(room)
        self.rooms.setdefault((key[0], room), set()).add(key)
        return True

    def leave(self, key: MemberKey, room: str) -> bool:
        m = self.members.get(key)
        if m is None or room not in m.rooms:
            return False
        m.rooms.discard(room)
        members = self.rooms.get((key[0], room))
        if members is not None:
            members.discard(key)
            if not members:
                del self.rooms[(key[0], room)]
        return True

    def expired_members(self, now: float) -> list[Member]:
        """Members detached for longer than the grace period (their rooms are left by the caller)."""
        return [m for m in self.members.values() if m.detached_at is not None and now - m.detached_at >= self.grace_s]

    def forget(self, key: MemberKey) -> None:
        m = self.members.pop(key, None)
        if m:
            for room in list(m.rooms):
                self.members[key] = m
                self.leave(key, room)
            self.members.pop(key, None)

    def is_member(self, key: MemberKey, room: str) -> bool:
        m = self.members.get(key)
        return m is not None and room in m.rooms

    def set_state(self, tenant: str, room: str, user: str, conn: str, state: Any, now: float) -> None:
        states = self.ephemeral.setdefault((tenant, room), {})
        if state is None:
            states.pop(conn, None)
        else:
            states[conn] = Ephemeral(user, conn, state, now + self.ttl_s)

    def expire_states(self, now: float) -> list[tuple[str, str, Ephemeral]]:
        gone = []
        for (tenant, room), states in list(self.ephemeral.items()):
            for conn, e in list(states.items()):
                if e.expires_at <= now:
                    del states[conn]
                    gone.append((tenant, room, e))
            if not states:
                del self.ephemeral[(tenant, room)]
        return gone

    def snapshot(self, tenant: str, room: str, now: float) -> dict[str, Any]:
        members = sorted(self.rooms.get((tenant, room), ()))
        out = []
        for key in members:
            m = self.members.get(key)
            if m is None:
                continue
            out.append({"user": m.user, "client": m.client, "online": bool(m.connections)})
        states = [
            {"user": e.user, "conn": e.conn, "state": e.state, "ttl_s": round(max(0.0, e.expires_at - now), 3)}
            for e in self.ephemeral.get((tenant, room), {}).values()
            if e.expires_at > now
        ]
        return {"room": room, "members": out, "states": states}
