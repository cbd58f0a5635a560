"""REST for documents: state with time travel (``?at=``), Yjs diffs, snapshots (checksummed, chunked)."""
from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import AsyncIterator

from litestar import Request, Response, get
from litestar.params import Parameter
from litestar.response import Stream

from engine.doc_history import document_at, document_at_time
from engine.documents import CRDT_UPDATE, DocSnapshot, Document, checksum
from engine.errors import ValidationError

from .auth import READ
from .deps import gateway_of, read_scope
from .ws_yjs import DOC_RE, SNAPSHOT_KIND, load_document


def _doc_name(doc: str) -> str:
    if not DOC_RE.match(doc):
        raise ValidationError("invalid document name", reason="invalid_doc")
    return doc


def parse_at(at: str | None) -> tuple[int | None, int | None]:
    """``?at=`` is a log position (integer) or an ISO 8601 time; returns (position, time_us)."""
    if at is None or at == "":
        return None, None
    if at.isdigit():
        return int(at), None
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValidationError("'at' must be a position or an ISO 8601 time") from e
    if t.tzinfo is None:
        raise ValidationError("'at' times need a timezone (e.g. Z)")
    return None, int(t.timestamp() * 1_000_000)


async def _document(request: Request, doc: str, at: str | None) -> tuple[str, Document]:
    gw = gateway_of(request)
    doc = _doc_name(doc)
    tenant = await read_scope(request, resource=f"doc:{doc}")
    stream = f"doc/{doc}"
    position, time_us = parse_at(at)
    if position is None and time_us is None:
        if tenant == request.state.principal.tenant:
            return tenant, await gw.yjs.document_for_read(tenant, doc)
        return tenant, await load_document(gw.store, tenant, stream)
    events = [e for e in await gw.store.read_stream(tenant, stream) if e.type == CRDT_UPDATE]
    snaps = []
    found = await gw.store.load_snapshot(tenant, stream, SNAPSHOT_KIND, at_or_before=position)
    if found is not None and position is not None:
        snaps.append(DocSnapshot(found[0], bytes(found[1]), found[2]))
    if position is not None:
        return tenant, document_at(position, snaps, events, doc_id=stream)
    return tenant, document_at_time(time_us, [], events, doc_id=stream)


@get("/docs/{doc:str}", opt={"perm": READ}, summary="A document's state (time travel with ?at=position|ISO time)")
async def read_doc(
    request: Request,
    doc: str,
    at: str | None = Parameter(default=None, description="log position or ISO 8601 time"),
    text: list[str] | None = Parameter(default=None, description="names of Y.Text roots to render"),
    map_: list[str] | None = Parameter(default=None, query="map", description="names of Y.Map roots to render"),
    array: list[str] | None = Parameter(default=None, description="names of Y.Array roots to render"),
) -> dict:
    _, d = await _document(request, doc, at)
    state = d.encode_state()
    body = {
        "doc": doc,
        "position": d.position,
        "version": d.version,
        "state": base64.b64encode(state).decode(),
        "checksum": checksum(state),
        "state_vector": base64.b64encode(d.state_vector()).decode(),
    }
    if text or map_ or array:
        body["text"] = {n: d.text(n) for n in text or ()}
        body["map"] = {n: d.map(n) for n in map_ or ()}
        body["array"] = {n: d.array(n) for n in array or ()}
    return body


@get("/docs/{doc:str}/diff", opt={"perm": READ}, summary="Yjs delta: the update a holder of state vector `sv` lacks")
async def doc_diff(
    request: Request, doc: str, sv: str | None = Parameter(default=None, description="base64 state vector")
) -> Response:
    _, d = await _document(request, doc, None)
    try:
        vector = base64.b64decode(sv, validate=True) if sv else None
    except (binascii.Error, ValueError) as e:
        raise ValidationError("sv must be base64") from e
    return Response(d.diff(vector), media_type="application/octet-stream",
                    headers={"X-Syncline-Position": str(d.position)})


@get("/docs/{doc:str}/snapshot", opt={"perm": READ}, summary="A snapshot (Yjs update), streamed in chunks")
async def doc_snapshot(request: Request, doc: str, at: str | None = Parameter(default=None)) -> Stream:
    """The whole state as one Yjs update, with its sha256 in ``X-Syncline-Checksum`` and the
    position it covers in ``X-Syncline-Position``; sent in chunks of
    ``SYNCLINE_SNAPSHOT_CHUNK_BYTES`` so large documents stream."""
    gw = gateway_of(request)
    tenant, d = await _document(request, doc, at)
    snap = d.snapshot() if at is None else DocSnapshot.of(d.encode_state(), position=d.position)
    if at is None and snap.position:
        await gw.store.save_snapshot(tenant, f"doc/{doc}", SNAPSHOT_KIND, snap.position, snap.state, snap.checksum)
    chunk = gw.settings.snapshot_chunk_bytes
    data = snap.state

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]

    return Stream(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "X-Syncline-Checksum": snap.checksum,
            "X-Syncline-Position": str(snap.position),
            "X-Syncline-Size": str(len(data)),
            "X-Syncline-Chunks": str((len(data) + chunk - 1) // chunk),
        },
    )


V1 = [read_doc, doc_diff, doc_snapshot]
