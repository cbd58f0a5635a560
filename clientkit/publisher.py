"""Publishing to the bus over REST, with retries that can never append twice.

    async with Publisher("http://gw:8000", token) as pub:
        r = await pub.publish("orders/42", [{"type": "order.paid", "data": {"total": 10}}])
        r.first_position, r.last_position, r.duplicate

``publish`` returns once the server has committed the events (``POST
/v1/streams/{stream}`` answers after the commit, with the positions). It retries what
may succeed on a second try — connection errors and timeouts, 5xx answers, ``429``
(after its ``Retry-After``) — with exponential backoff and full jitter (a random delay
between 0 and ``base * 2**attempt``, capped), so many publishers recovering from the
same outage do not retry in step. Every attempt of one ``publish`` carries the same
``Idempotency-Key``: if the first attempt was committed but its answer was lost, the
retry gets the first result back (``duplicate=True``) instead of appending again.
Anything else (a 4xx such as ``version_conflict`` or ``forbidden``) is raised at once as
:class:`PublishRefused` with the server's stable code.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import httpx

from .errors import ClientKitError, TransportError

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class PublishRefused(ClientKitError):
    """The server refused the publish for a reason a retry would not change."""

    code = "publish_refused"

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}", status=status, server_code=code, details=details)
        self.status = status
        self.server_code = code


class PublishFailed(TransportError):
    """Every attempt failed transiently (the last error is the cause). The events may or may
    not be committed: publishing again with the same ``idempotency_key`` settles it."""

    code = "publish_failed"


@dataclass(frozen=True, slots=True)
class PublishResult:
    stream: str
    first_position: int
    last_position: int
    first_version: int
    last_version: int
    event_ids: tuple[str, ...]
    duplicate: bool
    idempotency_key: str
    attempts: int


def full_jitter(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """AWS's "full jitter": uniform in [0, min(cap, base * 2**attempt)] (attempt 0 first)."""
    return rand() * min(cap_s, base_s * (2 ** attempt))


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Publisher:
    def __init__(
        self, base_url: str, token: str | Callable[[], str], *, max_attempts: int = 8, base_delay_s: float = 0.1,
        max_delay_s: float = 10.0, timeout_s: float = 10.0, client: httpx.AsyncClient | None = None,
        rand: Callable[[], float] = random.random, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self._rand = rand
        self._sleep = sleep
        self.retries = 0  # attempts after the first, over this publisher's life

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _headers(self, key: str) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}", "Idempotency-Key": key}

    async def publish(self, stream: str, events: list[dict[str, Any]], *, expected_version: int | None = None,
                      idempotency_key: str | None = None) -> PublishResult:
        key = idempotency_key or f"pub-{uuid.uuid4().hex}"
        url = f"{self.base_url}/v1/streams/{quote(stream, safe='/')}"
        body: dict[str, Any] = {"events": events}
        if expected_version is not None:
            body["expected_version"] = expected_version
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                self.retries += 1
            try:
                r = await self._client.post(url, json=body, headers=self._headers(key))
            except httpx.TransportError as e:  # connect, read, write errors and timeouts
                last = e
                await self._sleep(full_jitter(attempt, self.base_delay_s, self.max_delay_s, self._rand))
                continue
            if r.status_code in (200, 201):
                d = r.json()
                return PublishResult(d["stream"], d["first_position"], d["last_position"], d["first_version"],
                                     d["last_version"], tuple(d["event_ids"]), bool(d["duplicate"]), key,
                                     attempt + 1)
            if r.status_code in TRANSIENT_STATUS:
                last = PublishRefused(r.status_code, *_code(r))
                delay = full_jitter(attempt, self.base_delay_s, self.max_delay_s, self._rand)
                if r.status_code == 429:  # never sooner than the server asked
                    delay = max(delay, retry_after_s(r.headers.get("retry-after")) or 0.0)
                await self._sleep(min(delay, max(self.max_delay_s, 60.0)))
                continue
            raise PublishRefused(r.status_code, *_code(r))
        raise PublishFailed(f"gave up after {self.max_attempts} attempts: {last}", idempotency_key=key) from last


def _code(r: httpx.Response) -> tuple[str, str, Any]:
    try:
        d = r.json()
        return str(d.get("code", "http_error")), str(d.get("message", ""))[:500], d.get("details")
    except ValueError:
        return "http_error", r.text[:200], None
