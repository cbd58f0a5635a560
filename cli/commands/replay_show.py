"""What `syncline replay --show` prints: the values the rebuilt projections hold.

The summary of `replay` counts things (so many records, so many documents); an analyst
asking "what was the state at position N" wants the values themselves: each record's
fields and open conflicts, each document's content, who is in which room, each feed's
newest item, each stream's version. ``holdings`` collects them as plain JSON-ready data,
at most ``limit`` entries per projection (a log holds millions of records; the rest is
counted, never silently dropped), and ``print_holdings`` renders them as tables.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import pycrdt
from rich.console import Console
from rich.table import Table

from syncline.store.projector import Projector


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # Yjs numbers are doubles: 3.0 was written as 3
    return value


def document_roots(state: bytes) -> dict[str, Any]:
    """Each root of a Yjs document, rendered. A Yjs update names its roots but not their
    types (a client declares the type when it first reads a root), so each root is read
    in a fresh copy of the document as a map, then a text, then an array, and the first
    reading that holds something is kept. Empty roots show as ``None``."""
    names = list(_fresh(state).keys())
    out: dict[str, Any] = {}
    for name in sorted(names):
        as_map = _fresh(state).get(name, type=pycrdt.Map).to_py() or {}
        if as_map:
            out[name] = _jsonable(as_map)
            continue
        as_text = str(_fresh(state).get(name, type=pycrdt.Text))
        if as_text:
            out[name] = as_text
            continue
        as_array = _fresh(state).get(name, type=pycrdt.Array).to_py() or []
        out[name] = _jsonable(as_array) if as_array else None
    return out


def _fresh(state: bytes) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    doc.apply_update(state)
    return doc


def _take(items: list, limit: int) -> tuple[list, int]:
    return items[:limit], max(0, len(items) - limit)


def holdings(p: Projector, limit: int) -> dict[str, Any]:
    """The projections' values, ``limit`` entries each (sorted by tenant and name), and
    how many more each holds (``more``)."""
    out: dict[str, Any] = {}

    records = p.state("records")
    recs = sorted(((t, s, r) for t in records for s, r in records[t].records.items()), key=lambda x: x[:2])
    shown, more = _take(recs, limit)
    out["records"] = {"more": more, "items": [
        {"tenant": t, "stream": s, "version": r.version, "values": _jsonable(r.values()),
         "conflicts": [{"id": c.id, "field": c.field, "versions": [_jsonable(w.value) for w in c.versions]}
                       for c in r.conflicts()]}
        for t, s, r in shown]}

    docs = sorted(p.state("documents").docs.items())
    shown, more = _take(docs, limit)
    out["documents"] = {"more": more, "items": [
        {"tenant": t, "stream": s, "position": d.position, "content": document_roots(d.encode_state())}
        for (t, s), d in shown]}

    presence = p.state("presence")
    rooms = sorted(set(presence.history) | set(presence.present))
    shown, more = _take(rooms, limit)
    out["presence"] = {"more": more, "items": [
        {"tenant": t, "room": room, "present": sorted(presence.present.get((t, room), {})),
         "changes": len(presence.history.get((t, room), ()))}
        for t, room in shown]}

    feeds = p.state("feeds")
    keyed = sorted([("user", k, v) for k, v in feeds.by_user.items()]
                   + [("room", k, v) for k, v in feeds.by_room.items()], key=lambda x: (x[1], x[0]))
    shown, more = _take(keyed, limit)
    out["feeds"] = {"more": more, "items": [
        {"tenant": k[0], "kind": kind, "key": k[1], "items": len(v),
         "newest": dict(zip(("position", "time_us", "type", "stream", "user"), v[-1])) if v else None}
        for kind, k, v in shown]}

    stats = sorted(p.state("stats").items())
    shown, more = _take(stats, limit)
    out["stats"] = {"more": more, "items": [
        {"tenant": t, "stream": s, "version": st.version, "events": st.events, "types": dict(st.types)}
        for (t, s), st in shown]}
    return out


def _cell(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def print_holdings(console: Console, held: dict[str, Any]) -> None:
    """One table per projection, with a line saying how many entries were left out."""
    tables = {
        "records": (("tenant", "stream", "values", "open conflicts"),
                    lambda i: (i["tenant"], i["stream"], _cell(i["values"]),
                               ", ".join(f"{c['field']}: {_cell(c['versions'])}" for c in i["conflicts"]) or "-")),
        "documents": (("tenant", "stream", "content"),
                      lambda i: (i["tenant"], i["stream"], _cell(i["content"]))),
        "presence": (("tenant", "room", "present now", "joins and leaves"),
                     lambda i: (i["tenant"], i["room"], ", ".join(i["present"]) or "-", str(i["changes"]))),
        "feeds": (("tenant", "feed", "items", "newest"),
                  lambda i: (i["tenant"], f"{i['kind']} {i['key']}", str(i["items"]),
                             f"{i['newest']['type']} on {i['newest']['stream']} @{i['newest']['position']}"
                             if i["newest"] else "-")),
        "stats": (("tenant", "stream", "version", "event types"),
                  lambda i: (i["tenant"], i["stream"], str(i["version"]), _cell(i["types"]))),
    }
    for name, (columns, row) in tables.items():
        part = held[name]
        table = Table(*columns, title=name)
        for item in part["items"]:
            table.add_row(*row(item))
        console.print(table)
        if part["more"]:
            console.print(f"… and {part['more']:,} more {name} (raise --limit to see them)")
