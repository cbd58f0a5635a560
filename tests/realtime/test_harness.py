"""The harness itself, on behaviour that already works: the proxy alternates gateways, a
private Redis dies and comes back on its port, gateways stop on SIGTERM and restart, and
JavaScript + pycrdt clients converge on ONE gateway behind the proxy."""
from __future__ import annotations

import asyncio
import socket

import pycrdt
import pytest
from rtclients import Native, doc_json, text_of, until, yclient


def _ws_connections(gw) -> int:
    return gw.readyz()["dependencies"]["websocket"]["connections"]


async def test_proxy_sends_each_connection_to_the_next_gateway(cluster_factory, tmp_path):
    c = cluster_factory(f"sqlite+aiosqlite:///{tmp_path}/rr.db", n=2, label="rr")
    first = c.proxy.peek()
    clients = [await Native.connect(c.proxy.ws_url, f"u{i}") for i in range(3)]
    try:
        assert c.proxy.assignments[-3:] == [first, 1 - first, first]
        # the connections really are on the gateways the proxy says
        await until(lambda: [_ws_connections(g) for g in c.gateways] == [
            c.proxy.assignments[-3:].count(0), c.proxy.assignments[-3:].count(1)], 5, "connection counts")
        # and bytes flow both ways through it
        await clients[1].send("ping", id="p1")
        pong = await clients[1].wait_for(lambda m: m["t"] == "pong", 5, "pong")
        assert pong["id"] == "p1"
    finally:
        for n in clients:
            await n.close()


def test_private_redis_can_be_killed_and_restarted_on_its_port(private_redis):
    port = private_redis.port
    assert private_redis.ping()
    private_redis.kill()
    assert not private_redis.ping()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    private_redis.restart()
    assert private_redis.port == port and private_redis.ping()


async def test_one_gateway_behind_the_proxy_js_and_python_converge_and_survive_a_restart(
        cluster_factory, pg_database, private_redis, js):
    """Everything the two-gateway tests do, on one gateway (where it works today)."""
    c = cluster_factory(pg_database, redis=private_redis, n=1, label="one")
    gw = c[0]
    await until(lambda: gw.redis_state() == "up", 10, "redis up")
    await js.connect("a", c.proxy.ws_url, "harness")
    py = pycrdt.Doc()
    async with yclient(c.proxy.ws_url, "harness", py, user="py"):
        await js.call("insert", id="a", index=0, text="js;")
        py.get("text", type=pycrdt.Text).insert(0, "py;")
        await js.call("mapSet", id="a", key="k", value=[1, "two"])
        await until(lambda: len(text_of(py)) == 6 and doc_json(py)["map"] == {"k": [1, "two"]}, 5, "py")

        async def same() -> bool:
            return (await js.text("a")) == text_of(py)
        await until(same, 5, "js and py to agree")
        final = text_of(py)
    await js.call("close", id="a")
    # stop (SIGTERM) and start again on the same port: a new client sees everything
    port = gw.port
    c.restart()
    assert gw.port == port and gw.exit_codes[-1] in (0, -15), gw.exit_codes
    await js.connect("late", c.proxy.ws_url, "harness")
    assert (await js.state("late"))["text"] == final
    late = pycrdt.Doc()
    async with yclient(c.proxy.ws_url, "harness", late):
        await until(lambda: text_of(late) == final, 5, "late pycrdt client")
    await asyncio.sleep(0)
