"""REST for state: documents and records with time travel (``?at=``), Yjs diffs,
deltas with cursors, and checksummed snapshots streamed in chunks."""
from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import AsyncIterator

from litestar import Request, Response, get
from litestar.params import Parameter
from litestar.response import Stream

from syncline.engine import access
from syncline.engine.documents import Document, checksum
from syncline.engine.errors import ValidationError
from syncline.engine.events import POSITION_MAX, VERSION_MAX, check_stream
from syncline.engine.syncdata import chunk_snapshot, chunk_snapshot_json
from syncline.store import history
from syncline.store.sync import delta, state_snapshot

from .auth import READ
from .deps import check_stream_access, gateway_of, principal_of, read_scope, visible_events
from .wire import events_wire
from .ws_yjs import DOC_RE


def _doc_name(doc: str) -> str:
    if not DOC_RE.match(doc):
        raise ValidationError("invalid document name", reason="invalid_doc")
    return doc


def parse_at(at: str | None) -> tuple[int | None, int | None]:
    """``?at=`` is a log position (integer) or an ISO 8601 time; returns (position, time_us)."""
    if at is None or at == "":
        return None, None
    if at.isascii() and at.isdigit():
        if len(at) > 19 or int(at) > POSITION_MAX:
            raise ValidationError(f"'at' positions are at most {POSITION_MAX}")
        return int(at), None
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except (ValueError, OverflowError) as e:
        raise ValidationError("'at' must be a position or an ISO 8601 time") from e
    if t.tzinfo is None:
        raise ValidationError("'at' times need a timezone (e.g. Z)")
    try:
        return None, int(t.timestamp() * 1_000_000)
    except (ValueError, OverflowError) as e:
        raise ValidationError("'at' is out of range") from e


async def _document(request: Request, doc: str, at: str | None) -> tuple[str, Document]:
    gw = gateway_of(request)
    doc = _doc_name(doc)
    check_stream_access(principal_of(request), f"doc/{doc}")  # (token scopes)
    tenant = await read_scope(request, resource=f"doc:{doc}")
    position, time_us = parse_at(at)
    if position is None and time_us is None and tenant == principal_of(request).tenant:
        return tenant, await gw.yjs.document_for_read(tenant, doc)
    return tenant, await history.load_document(gw.store, tenant, f"doc/{doc}", position=position, time_us=time_us)


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


@get("/docs/{doc:str}/diff", opt={"perm": READ}, media_type="application/octet-stream",
     summary="Yjs delta: the update a holder of state vector `sv` lacks")
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


def _chunked(data: bytes, chunk: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]

    return gen()


@get("/docs/{doc:str}/snapshot", opt={"perm": READ}, media_type="application/octet-stream",
     summary="A document snapshot (Yjs update), streamed in chunks")
async def doc_snapshot(request: Request, doc: str, at: str | None = Parameter(default=None)) -> Stream:
    """The whole state as one Yjs update, its sha256 in ``X-Syncline-Checksum``, the
    position it covers in ``X-Syncline-Position``; streamed in chunks of
    ``SYNCLINE_SNAPSHOT_CHUNK_BYTES``."""
    gw = gateway_of(request)
    _, d = await _document(request, doc, at)
    state = d.encode_state()
    digest = checksum(state)
    chunk = gw.settings.snapshot_chunk_bytes
    return Stream(
        _chunked(state, chunk),
        media_type="application/octet-stream",
        headers={
            "X-Syncline-Checksum": digest,
            "X-Syncline-Position": str(d.position),
            "X-Syncline-Size": str(len(state)),
            "X-Syncline-Chunks": str(max(1, (len(state) + chunk - 1) // chunk)),
        },
    )


def _selection(request: Request, stream: list[str] | None, prefix: list[str] | None) -> tuple[list, list]:
    streams, prefixes = list(stream or ()), list(prefix or ())
    for s in streams:
        check_stream(s)
    access.check_selection(principal_of(request), streams, prefixes)  # the rest is filtered after the read
    return streams, prefixes


@get("/sync/deltas", opt={"perm": READ}, summary="Deltas: everything after a position or cursor for a selection")
async def sync_deltas(
    request: Request,
    stream: list[str] | None = Parameter(default=None),
    prefix: list[str] | None = Parameter(default=None),
    after: int | None = Parameter(default=None, ge=0, le=POSITION_MAX),
    cursor: str | None = Parameter(default=None),
    limit: int = Parameter(default=500, ge=1, le=5000),
) -> dict:
    streams, prefixes = _selection(request, stream, prefix)
    tenant = await read_scope(request, resource="deltas")
    d = await delta(gateway_of(request).store, tenant, streams=streams, prefixes=prefixes, after=after,
                    cursor=cursor, limit=limit)
    return {"events": events_wire(visible_events(principal_of(request), d.events, request)), "cursor": d.cursor,
            "next_after": d.next_after, "head": d.head, "done": d.done}


@get("/snapshots", opt={"perm": READ}, summary="A consistent snapshot of a selection, with checksum, in chunks")
async def snapshots(
    request: Request,
    stream: list[str] | None = Parameter(default=None),
    prefix: list[str] | None = Parameter(default=None),
    at: int | None = Parameter(default=None, ge=0, le=POSITION_MAX),
    chunk: int | None = Parameter(default=None, ge=0, le=VERSION_MAX, description="chunk index; omit for the manifest"),
) -> Response:
    """Without ``chunk``: the manifest ``{position, checksum, total, chunk_bytes, format}``.
    With ``chunk=i``: that chunk. By default (and with ``Accept: application/octet-stream``
    or ``application/msgpack``) its bytes: msgpack of ``[position, content]`` split in
    pieces (engine.syncdata.assemble_snapshot). With ``Accept: application/json``, a JSON
    object ``{index, total, checksum, position, data}`` whose ``data`` is a piece of the
    JSON text of ``[position, content]``, bytes as ``{"$b64": ...}``
    (engine.syncdata.assemble_json_snapshot); the manifest then counts JSON chunks, so
    ask for the manifest and the chunks with the same Accept. Continue with deltas
    after ``position``."""
    gw = gateway_of(request)
    streams, prefixes = _selection(request, stream, prefix)
    tenant = await read_scope(request, resource="snapshot")
    if at is None:
        at = await gw.store.head_position()  # pin the position so every chunk request agrees
    p = principal_of(request)
    snap = await state_snapshot(gw.store, tenant, streams=streams, prefixes=prefixes, at=at,
                                registry=gw.records.config.registry,
                                readable=None if access.reads_everything(p) else (lambda s: access.can_read(p, s)))
    as_json = _wants_json(request)
    size = gw.settings.snapshot_chunk_bytes
    chunks = (chunk_snapshot_json if as_json else chunk_snapshot)(snap.position, snap.content, snap.checksum, size)
    if chunk is None:
        return Response({"position": snap.position, "checksum": snap.checksum, "total": len(chunks),
                         "chunk_bytes": size, "format": "json" if as_json else "msgpack"},
                        headers={"Vary": "Accept"})
    if chunk >= len(chunks):
        raise ValidationError(f"chunk {chunk} out of range (total {len(chunks)})")
    c = chunks[chunk]
    headers = {"X-Syncline-Checksum": c.checksum, "X-Syncline-Position": str(snap.position),
               "X-Syncline-Chunk": f"{c.index}/{c.total}", "Vary": "Accept"}
    if as_json:
        return Response({"index": c.index, "total": c.total, "checksum": c.checksum, "position": snap.position,
                         "data": c.data}, media_type="application/json", headers=headers)
    return Response(c.data, media_type="application/octet-stream", headers=headers)


# Media types a snapshot chunk is sent as; the first is the default (also for */* and
# for types we do not serve, so an old client that sends no Accept keeps its bytes).
_CHUNK_TYPES = ["application/octet-stream", "application/msgpack", "application/x-msgpack", "application/json"]


def _wants_json(request: Request) -> bool:
    return request.accept.best_match(_CHUNK_TYPES, default=_CHUNK_TYPES[0]) == "application/json"


@get("/records/{collection:str}/{record_id:str}", opt={"perm": READ},
     summary="A record's fields and open conflicts (time travel with ?at=position|ISO time)")
async def read_record(
    request: Request, collection: str, record_id: str, at: str | None = Parameter(default=None)
) -> dict:
    gw = gateway_of(request)
    stream = check_stream(f"rec/{collection}/{record_id}")
    check_stream_access(principal_of(request), stream)  # (token scopes)
    tenant = await read_scope(request, resource=f"record:{stream}")
    position, time_us = parse_at(at)
    rec = await history.record_at(gw.store, tenant, stream, position=position, time_us=time_us,
                                  registry=gw.records.config.registry)
    if not rec.version and not rec.fields:
        # Never written (or not yet, at ``at``): 200 with ``exists: false``, like a document
        # never written (its empty state), so a client can poll a record before it exists;
        # bad names, missing permissions and other tenants still answer 4xx with a code.
        return {"stream": stream, "exists": False, "values": {}, "conflicts": []}
    conflicts = []
    for c in rec.conflicts():
        conflicts.append({"id": c.id, "field": getattr(c, "field", None)})
    return {"stream": stream, "exists": True, "values": rec.values(), "conflicts": conflicts}


V1 = [read_doc, doc_diff, doc_snapshot, sync_deltas, snapshots, read_record]
