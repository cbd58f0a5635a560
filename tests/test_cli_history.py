"""`syncline export` and `syncline replay` end to end on a real SQLite file."""
from __future__ import annotations

import asyncio
import base64
import json

import pycrdt
from click.testing import CliRunner

from syncline.api.ops import default_resolution
from syncline.cli import main
from syncline.engine.clocks import HLCTimestamp, VectorClock
from syncline.engine.events import Actor, NewEvent
from syncline.engine.records import ClientOp
from syncline.store import open_store
from syncline.store.records_service import RecordsService


def _fill(url: str) -> dict:
    """Two tenants: record ops, keystrokes in a document, room joins, domain events."""

    async def go() -> dict:
        store = await open_store(url)
        records = RecordsService(store, default_resolution())
        doc = pycrdt.Doc()
        text = doc.get("text", type=pycrdt.Text)
        updates = []
        for i in range(5):
            before = doc.get_state()
            text.insert(len(text), "ab"[i % 2])
            updates.append(doc.get_update(before))
        await store.append("acme", "doc/notes", [NewEvent("crdt.update", u, actor=Actor("alice")) for u in updates])
        for i in range(4):
            op = ClientOp(op_id=f"c1-{i + 1}", client="c1", user="alice", stream=f"rec/tasks/{i % 2}",
                          clock=VectorClock({"c1": i + 1}), hlc=HLCTimestamp(1_000 + i, 0, "c1"),
                          set={"title": f"t{i}"})
            await records.submit("acme", [op])
        await store.append("acme", "room/lobby", [NewEvent("presence.joined", {"user": "bob"}, actor=Actor("bob"))])
        await store.append("globex", "order/1", [NewEvent("order.placed", {"n": 1}, actor=Actor("eve"))])
        await store.append("acme", "order/7", [NewEvent("order.placed", {"n": 7}, actor=Actor("alice"))])
        head = await store.head_position()
        await store.close()
        return {"updates": updates, "head": head, "text": str(text)}

    return asyncio.run(go())


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_export_writes_the_tenants_events_in_log_order_with_filters(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    filled = _fill(url)
    runner = CliRunner()

    everything = runner.invoke(main, ["export", "--db", url, "--all-tenants"])
    assert everything.exit_code == 0, everything.output
    all_events = _lines(everything.output)
    assert [e["position"] for e in all_events] == list(range(1, filled["head"] + 1))

    acme = _lines(runner.invoke(main, ["export", "--db", url, "--tenant", "acme"]).output)
    assert acme == [e for e in all_events if e["tenant"] == "acme"] and acme

    docs = _lines(runner.invoke(main, ["export", "--db", url, "--tenant", "acme", "--prefix", "doc/"]).output)
    assert [base64.b64decode(e["data"]) for e in docs] == filled["updates"]  # bytes round-trip
    replayed = pycrdt.Doc()
    for e in docs:
        replayed.apply_update(base64.b64decode(e["data"]))
    assert str(replayed.get("text", type=pycrdt.Text)) == filled["text"]

    orders = _lines(runner.invoke(main, ["export", "--db", url, "--all-tenants", "--type", "order.*"]).output)
    assert [(e["tenant"], e["stream"]) for e in orders] == [("globex", "order/1"), ("acme", "order/7")]

    out = tmp_path / "first.jsonl"
    first = runner.invoke(main, ["export", "--db", url, "--all-tenants", "--until", "3", "--out", str(out)])
    assert first.exit_code == 0
    assert [json.loads(line)["position"] for line in out.read_text().splitlines()] == [1, 2, 3]


def test_export_and_replay_refuse_bad_or_unknown_tenants_with_codes(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    _fill(url)
    runner = CliRunner()
    for cmd in ("export", "replay"):
        unknown = runner.invoke(main, [cmd, "--db", url, "--tenant", "nobody"])
        assert unknown.exit_code == 2 and "unknown_tenant" in unknown.output
        bad = runner.invoke(main, [cmd, "--db", url, "--tenant", "../etc"])
        assert bad.exit_code == 2 and "invalid_tenant" in bad.output
        neither = runner.invoke(main, [cmd, "--db", url])
        assert neither.exit_code == 2 and "--all-tenants" in neither.output


def test_replay_rebuilds_every_projection_and_stops_where_asked(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    filled = _fill(url)
    runner = CliRunner()
    whole = runner.invoke(main, ["replay", "--db", url, "--all-tenants", "--json"])
    assert whole.exit_code == 0, whole.output
    s = json.loads(whole.output.strip().splitlines()[-1])
    assert s["position"] == filled["head"] and s["events"] == filled["head"]
    assert (s["records"], s["documents"], s["rooms_with_history"], s["present"]) == (2, 1, 1, 1)
    assert s["streams"] == 6  # doc/notes, rec/tasks/0 and /1, room/lobby, order/7 (acme), order/1 (globex)

    acme = json.loads(runner.invoke(main, ["replay", "--db", url, "--tenant", "acme", "--json"]
                                    ).output.splitlines()[-1])
    assert acme["events"] == filled["head"] - 1 and acme["streams"] == 5

    early = json.loads(runner.invoke(main, ["replay", "--db", url, "--all-tenants", "--until", "5", "--json"]
                                     ).output.splitlines()[-1])
    assert early["position"] == 5 and early["events"] == 5 and early["records"] == 0 and early["documents"] == 1

    table = runner.invoke(main, ["replay", "--db", url, "--all-tenants"])
    assert table.exit_code == 0 and "2 records in 1 tenants" in table.output


def test_replay_show_prints_the_values_the_projections_hold(tmp_path):
    """The README says replay "prints what they hold": with --show, the values themselves."""
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"
    filled = _fill(url)
    runner = CliRunner()
    out = runner.invoke(main, ["replay", "--db", url, "--all-tenants", "--show", "--json"])
    assert out.exit_code == 0, out.output
    held = json.loads(out.output.strip().splitlines()[-1])["holds"]
    values = {(r["tenant"], r["stream"]): r["values"] for r in held["records"]["items"]}
    assert values == {("acme", "rec/tasks/0"): {"title": "t2"}, ("acme", "rec/tasks/1"): {"title": "t3"}}
    (doc,) = held["documents"]["items"]
    assert (doc["stream"], doc["content"]) == ("doc/notes", {"text": filled["text"]})
    (room,) = held["presence"]["items"]
    assert (room["room"], room["present"]) == ("lobby", ["bob"])
    versions = {(s["tenant"], s["stream"]): s["version"] for s in held["stats"]["items"]}
    assert versions[("acme", "doc/notes")] == 5 and versions[("globex", "order/1")] == 1

    # As it was at position 5: the document's first five keystrokes, no records yet.
    early = json.loads(runner.invoke(main, ["replay", "--db", url, "--all-tenants", "--until", "5", "--show",
                                            "--json"]).output.splitlines()[-1])["holds"]
    assert early["records"]["items"] == [] and early["documents"]["items"][0]["content"] == {"text": filled["text"]}

    # --limit bounds each projection and says how many were left out.
    one = json.loads(runner.invoke(main, ["replay", "--db", url, "--all-tenants", "--show", "--limit", "1",
                                          "--json"]).output.splitlines()[-1])["holds"]
    assert len(one["records"]["items"]) == 1 and one["records"]["more"] == 1

    table = runner.invoke(main, ["replay", "--db", url, "--tenant", "acme", "--show", "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert '{"title":"t2"}' in table.output and filled["text"] in table.output
    assert "1 more records" in table.output
    plain = runner.invoke(main, ["replay", "--db", url, "--tenant", "acme"])
    assert '{"title":"t2"}' not in plain.output  # the summary alone without --show
