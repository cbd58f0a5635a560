"""The gateway's log follower: realtime that follows the log, with Redis only a doorbell.

One task per gateway reads, in position order and across every tenant, the events
that realtime delivers: Yjs updates (``crdt.update`` on ``doc/…``), room messages
(``room.message`` on ``room/…``) and direct messages (``dm.message`` on ``dm/…``).
It wakes on the store's doorbell (in-process, PostgreSQL LISTEN/NOTIFY or Redis) and
polls every ``poll_interval_s`` when the doorbell is silent, so events written by
another gateway process, by REST, by the bus or by an offline client's queue all
reach this gateway's connections, whatever happens to Redis.

The fast paths stay: a local append is delivered to local peers as soon as it
returns, and Redis relays it to other gateways at once. Each consumer keeps an
:class:`engine.logfollow.DeliveryGate`, so whichever path brings a position first
acts on it and the other one skips it.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from syncline.engine.errors import StoreUnavailable
from syncline.engine.filters import EventFilter
from syncline.engine.logfollow import DeliveryGate

from .hub import room_channel, user_channel
from .logging import log

if TYPE_CHECKING:
    from .gateway import Gateway

DOC_UPDATE = "crdt.update"
ROOM_MESSAGE = "room.message"
DM_MESSAGE = "dm.message"
ROOM_PREFIX = "room/"
DM_PREFIX = "dm/"
REVOCATIONS = "$revocations"  # token revocations (api/revocations.py): every gateway applies them
TOKEN_REVOKED = "token.revoked"
FOLLOWED = EventFilter(stream_prefixes=("doc/", ROOM_PREFIX, DM_PREFIX), streams=(REVOCATIONS,),
                       types=(DOC_UPDATE, ROOM_MESSAGE, DM_MESSAGE, TOKEN_REVOKED))
PAGE = 1000
RELAY_CHANNEL = "relay:messages"  # the fast path of room and direct messages between gateways


def room_msg(room: str, data: dict, position: int) -> dict:
    """The live ``msg`` frame of a stored ``room.message`` event."""
    return {"t": "msg", "room": room, "from": data.get("from"), "data": data.get("data"),
            "conn": data.get("conn"), "pos": position}


def dm_msg(data: dict, position: int) -> dict:
    """The live ``msg`` frame of a stored ``dm.message`` event."""
    return {"t": "msg", "direct": True, "from": data.get("from"), "to": data.get("to"), "data": data.get("data"),
            "conn": data.get("conn"), "pos": position}


class Messages:
    """Room and direct messages (interaction class C): stored first, then delivered live
    to this gateway's connections exactly once, by the fast path or by the follower."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.gate = DeliveryGate()
        gw.hub.subscribe(RELAY_CHANNEL, self.relayed)

    def deliver(self, tenant: str, stream: str, msg: dict) -> None:
        """Deliver to local connections only (each gateway delivers to its own)."""
        if stream.startswith(ROOM_PREFIX):
            self.gw.hub.deliver_local(room_channel(tenant, stream[len(ROOM_PREFIX):]), msg)
        else:
            self.gw.hub.deliver_local(user_channel(tenant, stream[len(DM_PREFIX):]), msg)

    def sent(self, tenant: str, stream: str, msg: dict) -> None:
        """A message this gateway appended: deliver it here and relay it to the others,
        unless the follower was quicker (then it is delivered here already and the other
        gateways' followers bring it)."""
        if self.gate.claim(msg["pos"]):
            self.deliver(tenant, stream, msg)
            # Other gateways get it at once through Redis (``relayed``); this gateway's own
            # subscriber sees it too and skips it, since the position is claimed.
            self.gw.hub.publish(RELAY_CHANNEL, {"tenant": tenant, "stream": stream, "msg": msg})

    def relayed(self, payload: Any) -> None:
        """Another gateway relayed a message through Redis."""
        if not isinstance(payload, dict):
            return
        msg, tenant, stream = payload.get("msg"), payload.get("tenant"), payload.get("stream")
        if (isinstance(msg, dict) and isinstance(msg.get("pos"), int) and isinstance(tenant, str)
                and isinstance(stream, str) and stream.startswith((ROOM_PREFIX, DM_PREFIX))
                and self.gate.claim(msg["pos"])):
            self.deliver(tenant, stream, msg)

    def from_log(self, e: Any) -> None:
        if not self.gate.from_log(e.position) or not isinstance(e.data, dict):
            return
        if e.type == ROOM_MESSAGE and e.stream.startswith(ROOM_PREFIX):
            self.deliver(e.tenant, e.stream, room_msg(e.stream[len(ROOM_PREFIX):], e.data, e.position))
        elif e.type == DM_MESSAGE and e.stream.startswith(DM_PREFIX):
            self.deliver(e.tenant, e.stream, dm_msg(e.data, e.position))


class LogFollower:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cursor = 0
        self.messages = Messages(gw)
        self.pages = 0
        self.failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start at the head: what was written before this gateway started is in the log
        and reaches clients through their subscriptions and document loads."""
        self.cursor = await self.gw.store.head_position()
        self.messages.gate = DeliveryGate(self.cursor)
        self._task = asyncio.create_task(self._run(), name="log-follower")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def lag(self) -> int:
        """How far the follower is behind the last head it saw (0 when caught up)."""
        return max(0, getattr(self.gw.store.doorbell, "latest", 0) - self.cursor)

    async def _run(self) -> None:
        store = self.gw.store
        delay = 0.05
        while True:
            try:
                page = await store.read_log(None, after=self.cursor, limit=PAGE, filter=FOLLOWED, all_tenants=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # an outage: wait and read again from the same cursor
                self.failures += 1
                if self.last_error is None:
                    log.warning("follower.read_failed", error=e.message if isinstance(e, StoreUnavailable) else repr(e))
                self.last_error = repr(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self.last_error is not None:
                log.info("follower.recovered")
                self.last_error = None
            delay = 0.05
            self.pages += 1
            try:
                self._dispatch(page.events, page.next_after)
            except Exception:  # one bad event must not stop realtime for everyone
                log.exception("follower.dispatch_failed")
            self.cursor = max(self.cursor, page.next_after)
            if len(page.events) >= PAGE:
                continue
            await store.doorbell.wait(self.cursor, self.gw.settings.poll_interval_s)

    def _dispatch(self, events: Any, upto: int) -> None:
        yjs = self.gw.yjs
        messages = self.messages
        for e in events:
            if e.type == DOC_UPDATE:
                yjs.from_log(e)
            elif e.type == TOKEN_REVOKED:
                if e.stream == REVOCATIONS:
                    self.gw.revocation_from_log(e)
            else:
                messages.from_log(e)
        yjs.passed(upto)
        messages.gate.passed(upto)
        self.gw.metrics.follower_position.set(upto)
