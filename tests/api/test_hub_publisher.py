"""The hub's Redis publisher on a real Redis: one ordered, bounded queue drained in
pipelined batches on one connection; drops counted; state back to ``up`` once a publish
succeeds after an outage (a private redis-server, killed by pid and started again)."""
from __future__ import annotations

import asyncio
import os
import socket
import time

import httpx
import pytest
from services_support import PrivateRedis
from waiting import until, wait_for

from syncline.api.hub import Hub
from syncline.api.metrics import Metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    if not PrivateRedis().binary:
        if os.environ.get("CI"):
            pytest.fail("redis-server not found (make test installs it)")
        pytest.skip("redis-server not found")
    r = PrivateRedis().start()
    yield r
    r.kill()


async def test_burst_of_2000_reaches_the_other_hub_in_order(redis_client_url):
    metrics = Metrics()
    a, b = Hub(redis_client_url, metrics=metrics), Hub(redis_client_url)
    got_b: list[int] = []
    got_a: list[int] = []
    b.subscribe("acme:room:burst", lambda m: got_b.append(m["i"]))
    a.subscribe("acme:room:burst", lambda m: got_a.append(m["i"]))
    await a.start()
    await b.start()
    try:
        await until(lambda: a.redis_state == "up" and b.redis_state == "up", 10, "both hubs up")
        for i in range(2000):  # one synchronous burst: no yield to the loop in between
            a.publish("acme:room:burst", {"i": i, "pad": "x" * 64})
        assert got_a == list(range(2000))  # local delivery is immediate
        await until(lambda: len(got_b) >= 2000, 20, "the burst to cross Redis")
        await asyncio.sleep(0.1)
        assert got_b == list(range(2000))  # in order, nothing lost, nothing twice
        assert got_a == list(range(2000))  # our own echo from Redis is skipped
        assert a.dropped == {"queue_full": 0, "redis_down": 0, "shutdown": 0}
        assert a.redis_state == "up" and a.publisher_state == "up" and a.sent == 2000
        assert metrics.registry.get_sample_value("syncline_hub_published_total") == 2000
        assert metrics.registry.get_sample_value("syncline_hub_queue_depth") == 0
        # the wire format is unchanged: msgpack [node, channel, msg] on syncline:hub:<channel>
        import msgpack
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_client_url)
        ps = r.pubsub()
        await ps.subscribe("syncline:hub:acme:room:wire")
        await ps.get_message(timeout=1)  # the subscribe confirmation
        a.publish("acme:room:wire", {"hello": 1})
        msg = None
        for _ in range(50):
            msg = await ps.get_message(timeout=0.1)
            if msg and msg["type"] == "message":
                break
        assert msg and msgpack.unpackb(msg["data"], raw=False) == [a.node, "acme:room:wire", {"hello": 1}]
        await ps.aclose()
        await r.aclose()
    finally:
        await a.close()
        await b.close()


async def test_full_queue_is_counted_not_queued(redis_client_url):
    metrics = Metrics()
    a, b = Hub(redis_client_url, metrics=metrics, queue_max=10), Hub(redis_client_url)
    got_b: list[int] = []
    b.subscribe("acme:room:q", lambda m: got_b.append(m))
    await a.start()
    await b.start()
    try:
        await until(lambda: a.redis_state == "up" and b.redis_state == "up", 10, "both hubs up")
        local: list[int] = []
        a.subscribe("acme:room:q", local.append)
        for i in range(100):
            a.publish("acme:room:q", i)
        assert local == list(range(100))  # local delivery never depends on the queue
        assert metrics.registry.get_sample_value("syncline_hub_queue_depth") == 10
        assert a.dropped["queue_full"] == 90
        assert metrics.registry.get_sample_value("syncline_hub_dropped_total", {"reason": "queue_full"}) == 90
        assert a.overflowed_recently()
        stats = a.stats()
        assert stats["dropped"]["queue_full"] == 90 and stats["queue_max"] == 10
        await until(lambda: len(got_b) == 10, 10, "the queued ten to arrive")
        assert got_b == list(range(10))
        assert a.stats()["queue_depth"] == 0
    finally:
        await a.close()
        await b.close()


async def test_redis_killed_goes_down_and_returns_up_after_restart(private_redis):
    metrics = Metrics()
    a = Hub(private_redis.url, metrics=metrics, retry_s=0.2, publish_retry_s=0.2)
    b = Hub(private_redis.url, retry_s=0.2)
    got_b: list = []
    b.subscribe("acme:room:k", got_b.append)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.redis_state == "up" and b.redis_state == "up", 10, "both hubs up")
        a.publish("acme:room:k", "before")
        await until(lambda: got_b == ["before"], 5, "the first message")

        private_redis.kill()

        async def publishing_until(cond, what: str) -> None:
            deadline = time.monotonic() + 15
            n = 0
            while not cond():
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {a.stats()}"
                a.publish("acme:room:k", f"m{n}")
                n += 1
                await asyncio.sleep(0.02)

        await publishing_until(lambda: a.publisher_state == "down" and a.redis_state == "down", "the hub to go down")
        await until(lambda: a.dropped["redis_down"] > 0, 5, "drops counted as redis_down")
        assert metrics.registry.get_sample_value("syncline_hub_dropped_total", {"reason": "redis_down"}) > 0
        assert a.stats()["state"] == "down" and "error" in a.stats()

        private_redis.start()  # the same port
        await publishing_until(lambda: a.redis_state == "up" and b.redis_state == "up", "the hubs to come back up")
        assert a.publisher_state == "up" and a.listener_state == "up"
        got_b.clear()
        a.publish("acme:room:k", "after")
        await until(lambda: "after" in got_b, 5, "a message after the restart")
    finally:
        await a.close()
        await b.close()


async def test_publisher_recovers_without_the_listener(private_redis):
    # The listener waits 30 s between reconnects; the publisher must not wait for it.
    a = Hub(private_redis.url, retry_s=30, publish_retry_s=0.1)
    await a.start()
    try:
        await until(lambda: a.redis_state == "up", 10, "the hub up")
        private_redis.kill()
        await until(lambda: a.listener_state == "down", 10, "the listener to notice")
        a.publish("acme:room:x", 1)
        await until(lambda: a.publisher_state == "down", 10, "the publisher to notice")
        private_redis.start()
        await until(lambda: a.publisher_state == "up", 10, "the publisher to come back by itself")
        assert a.listener_state == "down"  # still sleeping
        assert a.redis_state == "down"  # the combined state stays honest: remote messages are not received
        a.publish("acme:room:x", 2)
        await until(lambda: a.sent >= 1, 5, "a publish to succeed")
    finally:
        await a.close()


def test_readyz_shows_queue_and_overflow(gateway, redis_client_url, monkeypatch):
    monkeypatch.setenv("SYNCLINE_HUB_QUEUE_MAX", "5")
    g = gateway(redis_url=redis_client_url)
    wait_for(lambda: httpx.get(f"{g.url}/readyz").json()["dependencies"]["redis"]["state"] == "up", 10,
             "the hub to reach Redis")
    body = httpx.get(f"{g.url}/readyz").json()
    redis_dep = body["dependencies"]["redis"]
    assert body["status"] == "ready"
    assert redis_dep["listener"] == "up" and redis_dep["publisher"] == "up"
    assert redis_dep["queue_depth"] == 0 and redis_dep["queue_max"] == 5
    assert redis_dep["dropped"] == {"queue_full": 0, "redis_down": 0, "shutdown": 0}

    g.call(_burst(g.gw.hub, 50))  # 50 publishes in one go on the gateway's loop
    body = httpx.get(f"{g.url}/readyz").json()
    assert body["status"] == "degraded" and "fanout_queue_overflow" in body["degradations"]
    assert body["dependencies"]["redis"]["dropped"]["queue_full"] == 45
    text = httpx.get(f"{g.url}/metrics").text
    assert 'syncline_hub_dropped_total{reason="queue_full"} 45.0' in text
    assert "syncline_hub_queue_depth" in text


async def _burst(hub: Hub, n: int) -> None:
    for i in range(n):
        hub.publish("acme:room:overflow", {"i": i})
