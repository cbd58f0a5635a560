"""What the REST state routes answer, as the docs say: a record never written does not
exist, and snapshot chunks come in the encoding the client's Accept asks for."""
from __future__ import annotations

import time

import httpx

from syncline.engine.clocks import HLCTimestamp
from syncline.engine.syncdata import Chunk, assemble_json_snapshot, assemble_snapshot


def client(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers=srv.headers())


def _op(n: int, value: str) -> dict:
    return {"kind": "op", "op": f"op-{n}", "client": "c1", "user": "alice", "stream": "rec/notes/9",
            "vc": {"c1": n}, "hlc": HLCTimestamp(int(time.time() * 1000) + n, 0, "c1").encode(),
            "set": {"title": value}, "delete": [], "base": n - 1}


def test_a_record_never_written_does_not_exist(srv):
    with client(srv) as c:
        never = c.get("/v1/records/notes/nothing-here")
        assert never.status_code == 200
        assert never.json() == {"stream": "rec/notes/nothing-here", "exists": False, "values": {}, "conflicts": []}

        c.post("/v1/streams/feed/x", json={"events": [{"type": "feed.item", "data": {}}]})
        before = c.get("/v1/log").json()["head"]
        assert c.post("/v1/ops", json={"ops": [_op(1, "hello")]}).json()["results"][0]["kind"] == "applied"
        now = c.get("/v1/records/notes/9").json()
        assert now["exists"] is True and now["values"] == {"title": "hello"}
        # Time travel to before its first write: it did not exist then.
        then = c.get("/v1/records/notes/9", params={"at": str(before)}).json()
        assert then["exists"] is False and then["values"] == {}



def test_snapshot_chunks_are_msgpack_by_default_and_json_when_asked(gateway):
    srv = gateway(snapshot_chunk_bytes=64)
    with client(srv) as c:
        for i in range(4):
            c.post("/v1/streams/feed/a", json={"events": [{"type": "feed.item", "data": {"i": i, "pad": "é" * 30}}]})
        params = {"prefix": "feed/"}

        manifest = c.get("/v1/snapshots", params=params).json()
        assert manifest["format"] == "msgpack" and manifest["total"] > 1
        binary = []
        for i in range(manifest["total"]):
            r = c.get("/v1/snapshots", params={**params, "at": manifest["position"], "chunk": i})
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            binary.append(Chunk(i, manifest["total"], manifest["checksum"], r.content))
        position, content, checksum = assemble_snapshot(binary)

        js = {"Accept": "application/json"}
        jmanifest = c.get("/v1/snapshots", params=params, headers=js).json()
        assert jmanifest["format"] == "json" and jmanifest["checksum"] == checksum
        assert jmanifest["position"] == position and jmanifest["total"] > 1
        pieces = []
        for i in range(jmanifest["total"]):
            r = c.get("/v1/snapshots", params={**params, "at": jmanifest["position"], "chunk": i}, headers=js)
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
            body = r.json()  # every chunk is a JSON document of its own
            assert (body["index"], body["total"], body["checksum"]) == (i, jmanifest["total"], checksum)
            pieces.append(Chunk(body["index"], body["total"], body["checksum"], body["data"]))
        assert assemble_json_snapshot(pieces) == (position, content, checksum)
        assert [e["data"]["i"] for e in content["feed/a"]["events"]] == [0, 1, 2, 3]

        # Binary stays the answer to */* and to an explicit msgpack or octet-stream.
        for accept in ("*/*", "application/msgpack", "application/octet-stream"):
            r = c.get("/v1/snapshots", params={**params, "at": position, "chunk": 0}, headers={"Accept": accept})
            assert r.headers["content-type"] == "application/octet-stream" and r.content == binary[0].data


def test_json_snapshot_chunks_carry_bytes_as_b64(gateway):
    """A document's Yjs state (bytes) survives the JSON chunks and matches the checksum."""
    import base64

    import pycrdt

    srv = gateway(snapshot_chunk_bytes=40)
    doc = pycrdt.Doc()
    doc.get("text", type=pycrdt.Text).insert(0, "héllo wörld")
    update = doc.get_update()
    with client(srv) as c:
        r = c.post("/v1/streams/doc/d1", json={"events": [{"type": "crdt.update",
                                                           "data": {"$b64": base64.b64encode(update).decode()}}]})
        assert r.status_code in (200, 201), r.text
        js = {"Accept": "application/json"}
        m = c.get("/v1/snapshots", params={"stream": "doc/d1"}, headers=js).json()
        chunks = []
        for i in range(m["total"]):
            body = c.get("/v1/snapshots", params={"stream": "doc/d1", "at": m["position"], "chunk": i},
                         headers=js).json()
            chunks.append(Chunk(body["index"], body["total"], body["checksum"], body["data"]))
        _, content, _ = assemble_json_snapshot(chunks)
        rebuilt = pycrdt.Doc()
        rebuilt.apply_update(content["doc/d1"]["state"])
        assert str(rebuilt.get("text", type=pycrdt.Text)) == "héllo wörld"


def test_json_snapshot_of_records_checks_against_the_same_checksum(srv):
    """Records carry field state (stamps, clocks, merge accumulators): their JSON form
    must decode to the very content the checksum covers."""
    with client(srv) as c:
        assert c.post("/v1/ops", json={"ops": [_op(1, "a"), _op(2, "b")]}).status_code == 200
        js = {"Accept": "application/json"}
        m = c.get("/v1/snapshots", params={"prefix": "rec/"}, headers=js).json()
        chunks = []
        for i in range(m["total"]):
            body = c.get("/v1/snapshots", params={"prefix": "rec/", "at": m["position"], "chunk": i},
                         headers=js).json()
            chunks.append(Chunk(body["index"], body["total"], body["checksum"], body["data"]))
        _, content, checksum = assemble_json_snapshot(chunks)
        assert checksum == c.get("/v1/snapshots", params={"prefix": "rec/"}).json()["checksum"]
        assert content["rec/notes/9"]["values"] == {"title": "b"}
