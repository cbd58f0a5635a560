"""clientkit.publisher against a real gateway: retries on lost answers, 503 and 429, with
one idempotency key per publish, so a retry never appends twice."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from syncline.clientkit.publisher import Publisher, PublishFailed, PublishRefused, full_jitter, retry_after_s


class FlakyProxy:
    """A TCP proxy in front of the gateway. Per connection, in order, it plays the next of
    ``script``: ``"drop_answer"`` forwards the request, waits for the gateway's answer (so
    the append is committed) and hangs up without passing it on; ``"503"`` answers 503
    itself; anything after the script is passed through."""

    def __init__(self, target_port: int, script: list[str]) -> None:
        self.target_port = target_port
        self.script = list(script)
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return head + await reader.readexactly(length)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                self.requests += 1
                act = self.script.pop(0) if self.script else "pass"
                if act == "503":
                    body = b'{"code":"store_unavailable","message":"try again"}'
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
                up_w.write(request)
                await up_w.drain()
                head = await up_r.readuntil(b"\r\n\r\n")
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                              if h.lower().startswith(b"content-length:"))
                body = await up_r.readexactly(length)
                up_w.close()
                if act == "drop_answer":  # committed, but the client never hears of it
                    writer.transport.abort()
                    return
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def srv(net_gateway, sqlite_url):
    return net_gateway(sqlite_url)


async def stream_events(srv, stream: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers(tenant="acme", user="svc")) as h:
        return (await h.get(f"/v1/streams/{stream}")).json()["events"]


async def test_a_lost_answer_is_retried_with_the_same_key_and_appends_once(srv):
    proxy = FlakyProxy(srv.port, ["drop_answer", "503"])
    url = await proxy.start()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    try:
        async with Publisher(url, srv.token(tenant="acme", user="svc"), sleep=sleep, rand=lambda: 0.5) as pub:
            r = await pub.publish("orders/1", [{"type": "item.added", "data": {"n": 1}}])
    finally:
        await proxy.close()
    assert r.attempts == 3 and proxy.requests == 3
    assert r.duplicate is True  # the first attempt was committed; the retry got its result
    events = await stream_events(srv, "orders/1")
    assert [e["id"] for e in events] == list(r.event_ids)
    assert r.first_position == events[0]["position"]
    assert sleeps == [0.05, 0.1]  # full jitter with rand=0.5: half of 0.1 * 2**attempt


async def test_429_waits_for_retry_after(net_gateway, sqlite_url):
    srv = net_gateway(sqlite_url, rest_rate_requests=2, rest_rate_window_s=1.0)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        await asyncio.sleep(s)

    async with Publisher(srv.url, srv.token(tenant="acme", user="svc"), sleep=sleep, rand=lambda: 0.0) as pub:
        results = [await pub.publish(f"orders/{i}", [{"type": "item.added"}]) for i in range(6)]
    assert results[0].attempts == 1 and any(r.attempts >= 2 for r in results)
    assert slept and min(slept) >= 1.0  # Retry-After (whole seconds), not the 0-second jitter
    for i in range(6):  # (read on the server: REST reads would be rate limited too)
        assert len(srv.call(srv.gw.store.read_stream("acme", f"orders/{i}"))) == 1


async def test_refusals_are_not_retried_and_outages_give_up(srv):
    token = srv.token(tenant="acme", user="svc")
    async with Publisher(srv.url, token) as pub:
        await pub.publish("orders/1", [{"type": "item.added"}])
        with pytest.raises(PublishRefused) as e:
            await pub.publish("orders/1", [{"type": "item.added"}], expected_version=0)
        assert e.value.status == 409 and e.value.server_code == "version_conflict" and pub.retries == 0

    async def no_sleep(s: float) -> None:
        return None

    async with Publisher("http://127.0.0.1:9", token, max_attempts=3, sleep=no_sleep) as pub:
        with pytest.raises(PublishFailed) as f:
            await pub.publish("orders/1", [{"type": "item.added"}], idempotency_key="k-1")
        assert pub.retries == 2 and f.value.details["idempotency_key"] == "k-1"


def test_full_jitter_and_retry_after_parsing():
    assert full_jitter(0, 0.1, 10, lambda: 1.0) == pytest.approx(0.1)
    assert full_jitter(3, 0.1, 10, lambda: 1.0) == pytest.approx(0.8)
    assert full_jitter(30, 0.1, 10, lambda: 1.0) == 10  # capped
    assert full_jitter(5, 0.1, 10, lambda: 0.0) == 0
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
