"""HTTP polling transport: the native protocol's messages, carried over REST.

Used when the WebSocket cannot be opened or keeps failing (docs/design.md,
"Interaction classes": when realtime is unavailable, clients poll). It presents the same ``Connection`` interface, so
the session core does not know the difference:

- ``sub``   -> ``GET /v1/events/poll?after=`` in a loop; answers are ``events`` messages
- ``ops``   -> ``POST /v1/ops``; the answer is an ``opacks`` message
- ``snap``  -> ``GET /v1/snapshots`` (manifest, then each chunk); ``snapshot`` messages
- ``ping``  -> a ``pong``; ``ack``/``hello`` need nothing
- rooms and presence are realtime only: they wait for the WebSocket to come back.

While polling it probes the WebSocket every ``probe_interval_s``; when a probe
connects, the polling connection ends with ``ConnectionClosed(upgrade=True)`` and the
client reconnects over the WebSocket at once.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import httpx

from syncline.engine import protocol as P

from ..errors import ConnectionClosed, TransportError


class PollingConnection:
    kind = "poll"

    def __init__(self, http: httpx.AsyncClient, *, poll_interval_s: float, limit: int,
                 probe: Callable[[], Awaitable[bool]] | None, probe_interval_s: float) -> None:
        self._http = http
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._poll_interval_s = poll_interval_s
        self._limit = limit
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._next_probe = time.monotonic() + probe_interval_s
        self._sub: tuple[str, int, tuple[str, ...]] | None = None  # (id, cursor, prefixes)
        self._next_poll = 0.0
        self._closed = False
        self.polls = 0

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        if self._closed:
            raise ConnectionClosed("polling connection closed")
        try:
            return await self._http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ConnectionClosed(f"poll request failed: {type(e).__name__}") from None

    async def send(self, msg: dict) -> None:
        t = msg["t"]
        if t == P.SUB:
            self._sub = (msg["id"], int(msg.get("after") or 0),
                         tuple(msg.get("prefixes") or ()) + tuple(msg.get("streams") or ()))
            self._next_poll = 0.0
            self._inbox.put_nowait(None)  # wake recv to poll now
        elif t == P.OPS:
            r = await self._request("POST", "/v1/ops", json={"ops": msg["ops"]})
            if r.status_code == 200:
                self._inbox.put_nowait(P.message(P.OPACKS, id=msg["id"], results=r.json()["results"]))
            elif r.status_code >= 500:
                raise ConnectionClosed(f"ops failed with HTTP {r.status_code}")
            else:
                body = _json(r)
                self._inbox.put_nowait(P.message(P.ERROR, code=str(body.get("code", "http_error")),
                                                 message=str(body.get("message", r.status_code)), ref=msg["id"]))
        elif t == P.SNAP:
            await self._snapshot(msg)
        elif t == P.PING:
            self._inbox.put_nowait(P.message(P.PONG, id=msg.get("id"), time_us=time.time_ns() // 1000))

    async def _snapshot(self, msg: dict) -> None:
        params = [("prefix", p) for p in msg.get("prefixes") or ()] + [("stream", s) for s in msg.get("streams") or ()]
        r = await self._request("GET", "/v1/snapshots", params=params)
        if r.status_code != 200:
            raise ConnectionClosed(f"snapshot manifest failed with HTTP {r.status_code}")
        m = r.json()
        for i in range(m["total"]):
            c = await self._request("GET", "/v1/snapshots", params=params + [("at", m["position"]), ("chunk", i)])
            if c.status_code != 200:
                raise ConnectionClosed(f"snapshot chunk failed with HTTP {c.status_code}")
            self._inbox.put_nowait(P.message(P.SNAPSHOT, id=msg["id"], index=i, total=m["total"],
                                             checksum=m["checksum"], data=c.content, position=m["position"]))

    async def recv(self) -> dict:
        while True:
            if self._closed:
                raise ConnectionClosed("polling connection closed")
            while not self._inbox.empty():
                msg = self._inbox.get_nowait()
                if msg is not None:
                    return msg
            now = time.monotonic()
            if self._probe is not None and now >= self._next_probe:
                self._next_probe = now + self._probe_interval_s
                if await self._probe():
                    raise ConnectionClosed("the websocket works again", upgrade=True)
            if self._sub is not None and now >= self._next_poll:
                msg = await self._poll()
                if msg is not None:
                    return msg
                continue
            wake = min(self._next_probe if self._probe else now + 3600,
                       self._next_poll if self._sub else now + 3600)
            try:
                msg = await asyncio.wait_for(self._inbox.get(), max(0.0, wake - now))
                if msg is not None:
                    return msg
            except asyncio.TimeoutError:
                pass

    async def _poll(self) -> dict | None:
        sub_id, cursor, prefixes = self._sub  # type: ignore[misc]
        r = await self._request("GET", "/v1/events/poll", params={"after": cursor, "limit": self._limit})
        if r.status_code != 200:
            raise ConnectionClosed(f"poll failed with HTTP {r.status_code}")
        self.polls += 1
        body = r.json()
        events = [e for e in body["events"] if not prefixes or str(e.get("stream", "")).startswith(prefixes)]
        nxt = int(body["next"])
        self._sub = (sub_id, max(cursor, nxt), prefixes)
        # More to read: poll again at once. Caught up: wait (the server suggests an
        # interval for idle clients; ours is capped by poll_interval_s).
        more = bool(body.get("more"))
        suggested = float(body.get("poll_interval_s") or self._poll_interval_s)
        self._next_poll = time.monotonic() + (0 if more else min(suggested, self._poll_interval_s))
        if not events and nxt <= cursor:
            return None
        return P.message(P.EVENTS, sub=sub_id, events=[P._from_json(e) for e in events], next=nxt,
                         head=int(body.get("head", nxt)))

    async def close(self) -> None:
        self._closed = True
        self._inbox.put_nowait(None)


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


class PollingConnector:
    def __init__(self, base_url: str, token: str, *, poll_interval_s: float = 0.5, limit: int = 1000,
                 probe: Callable[[], Awaitable[bool]] | None = None, probe_interval_s: float = 5.0,
                 timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.poll_interval_s = poll_interval_s
        self.limit = limit
        self.probe = probe
        self.probe_interval_s = probe_interval_s
        self.timeout_s = timeout_s
        self._http: httpx.AsyncClient | None = None

    async def open(self, client: str = "") -> PollingConnection:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s,
                                           headers={"Authorization": f"Bearer {self.token}"})
        try:
            r = await self._http.get("/v1/events/poll", params={"after": 0, "limit": 1})
        except httpx.HTTPError as e:
            raise TransportError(f"poll endpoint unreachable: {type(e).__name__}") from None
        if r.status_code != 200:
            raise TransportError(f"poll endpoint answered HTTP {r.status_code}", status=r.status_code)
        head = int(r.json().get("head", 0))
        conn = PollingConnection(self._http, poll_interval_s=self.poll_interval_s, limit=self.limit,
                                 probe=self.probe, probe_interval_s=self.probe_interval_s)
        conn._inbox.put_nowait(P.message(P.WELCOME, session="poll", tenant="poll", user="poll", head=head))
        return conn

    def set_token(self, token: str) -> None:
        """A refreshed token for the requests from now on (the client kit's token provider)."""
        self.token = token
        if self._http is not None:
            self._http.headers["Authorization"] = f"Bearer {token}"

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

