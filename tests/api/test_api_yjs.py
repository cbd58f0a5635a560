"""The Yjs endpoint with pycrdt's own client side (pycrdt.Provider over a websockets channel)."""
from __future__ import annotations

import asyncio
import base64
from contextlib import asynccontextmanager

import httpx
import pycrdt
import websockets
from waiting import until

from syncline.engine.awareness import AwarenessEntry, encode_awareness_update
from syncline.engine.yprotocol import (
    AwarenessMessage,
    PermissionDenied,
    SyncStep1,
    decode_message,
    encode_awareness,
)


class WsChannel:
    """pycrdt's Channel protocol over a `websockets` client connection."""

    def __init__(self, ws, path: str) -> None:
        self.ws = ws
        self._path = path
        self.received: list[bytes] = []

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration

    async def send(self, message: bytes) -> None:
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        msg = await self.ws.recv()
        self.received.append(msg)
        return msg


@asynccontextmanager
async def yclient(srv, doc_name: str, doc: pycrdt.Doc, **tok):
    url = f"{srv.ws_url}/v1/yjs/{doc_name}?token={srv.token(**tok)}"
    async with websockets.connect(url, ping_interval=None) as ws:
        channel = WsChannel(ws, doc_name)
        async with pycrdt.Provider(doc, channel) as provider:
            await asyncio.wait_for(provider.synced.wait(), 5)
            yield channel


async def wait_until(cond, timeout: float = 5) -> None:
    await until(cond, timeout, "the documents to converge", interval=0.01)


def texts(doc: pycrdt.Doc) -> str:
    return str(doc.get("text", type=pycrdt.Text))


async def test_two_clients_converge_and_late_joiner_gets_everything(srv):
    d1, d2 = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(srv, "notes", d1, user="alice"), yclient(srv, "notes", d2, user="bob"):
        t1 = d1.get("text", type=pycrdt.Text)
        m1 = d1.get("meta", type=pycrdt.Map)
        a2 = d2.get("items", type=pycrdt.Array)
        t1 += "hello"
        m1["title"] = "T"
        a2.append(1)
        a2.append("two")
        await wait_until(lambda: texts(d2) == "hello" and d1.get("items", type=pycrdt.Array).to_py() == [1, "two"])
        t2 = d2.get("text", type=pycrdt.Text)
        t2.insert(5, " world")  # concurrent edits on both sides
        t1.insert(0, ">")
        await wait_until(lambda: texts(d1) == texts(d2) and len(texts(d1)) == 12)
        assert d2.get("meta", type=pycrdt.Map).to_py() == {"title": "T"}
        final = texts(d1)
    # late joiner, after both left (the server reloads from the log)
    d3 = pycrdt.Doc()
    async with yclient(srv, "notes", d3, user="carol"):
        await wait_until(lambda: texts(d3) == final)
        assert d3.get("items", type=pycrdt.Array).to_py() == [1, "two"]
        assert d3.get("meta", type=pycrdt.Map).to_py() == {"title": "T"}
    # every update is a crdt.update event on doc/notes, and the REST view agrees
    with httpx.Client(base_url=srv.url, headers=srv.headers()) as c:
        events = c.get("/v1/streams/doc/notes", params={"limit": 1000}).json()["events"]
        assert events and all(e["type"] == "crdt.update" for e in events)
        assert {e["actor"]["user"] for e in events} == {"alice", "bob"}
        body = c.get("/v1/docs/notes", params={"text": "text"}).json()
        assert body["text"]["text"] == final
        # time travel: the state at the first event's position has only the first edit
        first = events[0]["position"]
        early = c.get("/v1/docs/notes", params={"text": "text", "at": str(first)}).json()
        assert early["text"]["text"] in ("", "hello")
        snap = c.get("/v1/docs/notes/snapshot")
        import hashlib
        assert hashlib.sha256(snap.content).hexdigest() == snap.headers["x-syncline-checksum"]
        d4 = pycrdt.Doc()
        d4.apply_update(snap.content)
        assert texts(d4) == final


async def test_read_only_client_cannot_write(srv):
    writer, reader = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(srv, "ro", writer, user="alice") as _, yclient(srv, "ro", reader, user="victor",
                                                                       roles=["viewer"]) as rch:
        writer.get("text", type=pycrdt.Text).insert(0, "abc")
        await wait_until(lambda: texts(reader) == "abc")  # readers still receive
        reader.get("text", type=pycrdt.Text).insert(0, "EVIL")
        await wait_until(lambda: any(isinstance(_safe(m), PermissionDenied) for m in rch.received))
        await asyncio.sleep(0.2)
        assert texts(writer) == "abc"
    with httpx.Client(base_url=srv.url, headers=srv.headers()) as c:
        events = c.get("/v1/streams/doc/ro").json()["events"]
        assert {e["actor"]["user"] for e in events} == {"alice"}
        assert c.get("/v1/docs/ro", params={"text": "text"}).json()["text"]["text"] == "abc"


def _safe(frame):
    try:
        return decode_message(frame)
    except Exception:
        return None


async def test_awareness_relayed_bound_and_cleared_on_close(srv):
    base = f"{srv.ws_url}/v1/yjs/aw"
    async with websockets.connect(f"{base}?token={srv.token(user='alice')}") as a, \
            websockets.connect(f"{base}?token={srv.token(user='bob')}") as b:
        for ws in (a, b):
            assert isinstance(decode_message(await ws.recv()), SyncStep1)
        await a.send(encode_awareness(encode_awareness_update([AwarenessEntry(111, 1, {"user": "alice"})])))
        msg = decode_message(await asyncio.wait_for(b.recv(), 5))
        assert isinstance(msg, AwarenessMessage) and msg.entries[0].state == {"user": "alice"}
        # bob cannot take over alice's client id
        await b.send(encode_awareness(encode_awareness_update([AwarenessEntry(111, 5, {"user": "mallory"})])))
        await b.send(bytes([3]))  # query awareness
        msg = decode_message(await asyncio.wait_for(b.recv(), 5))
        assert isinstance(msg, AwarenessMessage)
        assert {e.client_id: e.state for e in msg.entries} == {111: {"user": "alice"}}
        await a.close()
        msg = decode_message(await asyncio.wait_for(b.recv(), 5))
        assert isinstance(msg, AwarenessMessage) and msg.entries[0].client_id == 111 and msg.entries[0].state is None


async def test_documents_are_scoped_per_tenant(srv):
    da, db = pycrdt.Doc(), pycrdt.Doc()
    async with yclient(srv, "shared", da, tenant="acme"):
        da.get("text", type=pycrdt.Text).insert(0, "acme secret")

        def stored() -> bool:
            r = httpx.get(f"{srv.url}/v1/streams/doc/shared", headers=srv.headers(tenant="acme"))
            return bool(r.json().get("events"))

        await wait_until(stored)
    async with yclient(srv, "shared", db, tenant="globex"):
        await asyncio.sleep(0.2)  # nothing may arrive: give it the time it would take
        assert texts(db) == ""
    r = httpx.get(f"{srv.url}/v1/docs/shared", params={"text": "text"}, headers=srv.headers(tenant="globex")).json()
    assert r["text"]["text"] == ""


async def test_malformed_frames_close_4400(srv):
    async with websockets.connect(f"{srv.ws_url}/v1/yjs/bad?token={srv.token()}") as ws:
        await ws.recv()
        await ws.send(bytes([0, 2, 5, 1, 2]))  # sync update with a truncated payload
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as e:
            assert e.rcvd.code == 4400


async def test_offline_update_submitted_over_rest_reaches_live_clients(srv):
    live = pycrdt.Doc()
    async with yclient(srv, "offline", live, user="alice"):
        offline = pycrdt.Doc()
        offline.get("text", type=pycrdt.Text).insert(0, "queued offline")
        update = offline.get_update()
        r = httpx.post(f"{srv.url}/v1/streams/doc/offline", headers=srv.headers(user="bob"),
                       json={"events": [{"type": "crdt.update", "data": {"$b64": base64.b64encode(update).decode()}}]})
        assert r.status_code == 201, r.text
        await wait_until(lambda: texts(live) == "queued offline")
        bad = httpx.post(f"{srv.url}/v1/streams/doc/offline", headers=srv.headers(user="bob"),
                         json={"events": [{"type": "crdt.update", "data": "not bytes"}]})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid"
