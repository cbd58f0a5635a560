"""Issue 15, item 5: the Python client kit, given a token provider, refreshes in-band
(``auth``) before expiry and keeps one connection across several token lifetimes; without
one, the server ends its session at ``exp``. Its Yjs replica reconnects with the newest token."""
from __future__ import annotations

import asyncio
import time

import pytest
from sec_tokens_support import RunningGateway, base_settings, exp_in, token
from waiting import until

from syncline.clientkit.client import SynclineClient, token_expiry


@pytest.fixture
def gw(tmp_path):
    g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/ck.db", jwt_leeway_s=0.0)).start()
    yield g
    g.stop()


def test_token_expiry_reads_exp_without_verifying():
    assert token_expiry(token(exp=2_000_000_000)) == 2_000_000_000
    assert token_expiry("garbage") is None and token_expiry("a.b.c") is None


async def test_a_token_provider_keeps_one_connection_across_token_lifetimes(gw):
    issued: list[int] = []

    def provider() -> str:
        exp = exp_in(2)
        issued.append(exp)
        return token(exp=exp)

    first_exp = exp_in(2)
    client = SynclineClient(gw.url, token(exp=first_exp), user="alice", token_provider=provider,
                            refresh_before_s=1.5)
    await client.start()
    try:
        await client.wait_until(lambda: client.status == "online", 10)
        n = 0
        deadline = first_exp + 3.5  # past the first token and at least one refreshed one
        while time.time() < deadline:
            n += 1
            client.set(f"rec/notes/{n}", {"title": f"n{n}"})
            await until(lambda: client.pending == 0, 10, "the op to be acknowledged")
            await asyncio.sleep(0.3)  # pacing the writes (not a wait for a condition)
        assert client.stats["connects"] == 1, client.stats
        assert client.stats["token_refreshes"] >= 2 and len(issued) >= 2
        assert client.status == "online"
        assert n >= 5
    finally:
        await client.close()


async def test_without_a_provider_the_session_ends_at_exp(gw):
    exp = exp_in(1.5)
    client = SynclineClient(gw.url, token(exp=exp), user="alice")
    await client.start()
    try:
        await client.wait_until(lambda: client.status == "online", 10)
        await client.wait_until(lambda: client.status != "online", exp - time.time() + 3)
        assert time.time() >= exp - 0.05
    finally:
        await client.close()


async def test_the_doc_replica_reconnects_with_the_refreshed_token(gw):
    def provider() -> str:
        return token(exp=exp_in(600))

    exp = exp_in(1.5)
    client = SynclineClient(gw.url, token(exp=exp), user="alice", token_provider=provider, refresh_before_s=0.5)
    doc = client.doc("shared")
    await client.start()
    try:
        await until(lambda: doc.online, 10, "the doc replica to connect")
        await until(lambda: time.time() > exp + 1.0, 5, "the first token to expire")
        assert token_expiry(doc.url.split("token=")[1]) > exp + 100
        text = doc.text()
        text += "after expiry"
        await until(lambda: doc.online, 10, "the doc replica to be online with the new token")
        other = SynclineClient(gw.url, token("bob"), user="bob")
        mirror = other.doc("shared")
        await other.start()
        try:
            await until(lambda: str(mirror.text()) == "after expiry", 15, "the edit to reach another replica")
        finally:
            await other.close()
    finally:
        await client.close()
