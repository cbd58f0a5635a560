"""Issue 15 item 6: tampering with the log is caught by ``verify``, and the checkpoints are signed.

A real SQLite file is filled through a store that signs checkpoints (Ed25519, the key
outside the database), pruned, and exported. Each test tampers with a byte-for-byte
copy of it the way an attacker with the file but without the key would (sqlite3, and
the public hash-chain algorithm to recompute chains), then runs the verifier and checks
the problem it must report, by its stable kind. A clean copy verifies clean. The signing
path runs on PostgreSQL too, and through the gateway (every class-D command is signed
before it is answered).
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from syncline.cli import main
from syncline.engine.auditlog import Checkpoint
from syncline.engine.codec import pack
from syncline.engine.events import NewEvent, Retention
from syncline.engine.logkernel import row_hash
from syncline.store import open_store
from syncline.store.audit import key_id, read_checkpoints, verify_audit, write_checkpoint

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = {key_id(KEY.public_key()): KEY.public_key()}
ATTACKER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
DAY_US = 86_400 * 1_000_000
T0 = 1_700_000_000 * 1_000_000


def crit(type_: str, **data) -> NewEvent:
    return NewEvent(type_, data, retention=Retention.CRITICAL)


async def _fill(url: str) -> None:
    now = [T0]
    store = await open_store(url, clock_us=lambda: now[0], audit_key=KEY, audit_checkpoint_every=4)
    for i in range(3):
        await store.append("acme", "old/1", [NewEvent("note.added", {"i": i})])
    for i in range(4):
        await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": i})])
    for i in range(2):
        await store.append("globex", "ledger/1", [NewEvent("entry.made", {"i": i})])
    for i in range(3):
        await store.append("acme", "$audit", [crit("audit.command", n=i)])
    await store.append("acme", "cmd/c1", [crit("order.placed", amount=5)])
    await store.signer.sync()
    now[0] += 10 * DAY_US
    for i in range(2):
        await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": 10 + i})])
        await store.append("acme", "$audit", [crit("audit.command", n=10 + i)])
        await store.signer.sync()
    report = await store.prune(retention_s=7 * 86400, now_us=now[0])
    assert report.events_deleted == 3 + 4 + 2
    for i in range(3):
        await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": 20 + i})])
    await store.append("globex", "notes/1", [NewEvent("note.added", {"i": 1})])
    await store.append("acme", "$audit", [crit("audit.command", n=30)])
    await store.close()  # signs what is left


@pytest.fixture(scope="module")
def signed_db(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("signed")
    path = d / "log.db"
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(_fill(url))

    async def export():
        store = await open_store(url)
        try:
            return await read_checkpoints(store)
        finally:
            await store.close()

    cps = asyncio.run(export())
    assert len(cps) >= 4
    exported = d / "checkpoints.jsonl"
    exported.write_text("".join(cp.to_json() + "\n" for cp in cps))
    return {"path": path, "export": exported, "checkpoints": cps}


def _copy(signed_db, tmp_path) -> Path:
    dst = tmp_path / "copy.db"
    src = sqlite3.connect(signed_db["path"])
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    return dst


def _verify(path: Path, export: list[Checkpoint] = ()) -> set[str]:
    async def go():
        store = await open_store(f"sqlite+aiosqlite:///{path}")
        try:
            chain = await store.verify()
            problems, _ = await verify_audit(store, PUBLIC, exported=export, expect_signed=True)
        finally:
            await store.close()
        return {b.reason for b in chain.breaks} | {p.kind for p in problems}

    return asyncio.run(go())


# ------------------------------------------------------------- attacker's helpers


def _rows(db, tenant, stream):
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM events WHERE tenant = ? AND stream = ? ORDER BY version",
                      (tenant, stream)).fetchall()


def _rechain(db, tenant, stream) -> None:
    """Recompute a stream's hash chain from its anchor and fix its streams row."""
    anchor = db.execute("SELECT anchor_hash FROM streams WHERE tenant = ? AND stream = ?",
                        (tenant, stream)).fetchone()
    prev = bytes(anchor[0]) if anchor else b"\x00" * 32
    last = None
    for r in _rows(db, tenant, stream):
        row = dict(r)
        row["prev_hash"] = prev
        h = row_hash(row)
        db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?", (prev, h, r["position"]))
        prev, last = h, r["version"]
    if last is not None:
        db.execute("UPDATE streams SET version = ?, head_hash = ? WHERE tenant = ? AND stream = ?",
                   (last, prev, tenant, stream))


def _append_forged(db, tenant, stream, type_, data, retention="critical") -> None:
    head = db.execute("SELECT position, time_us FROM log_head").fetchone()
    s = db.execute("SELECT version, head_hash FROM streams WHERE tenant = ? AND stream = ?",
                   (tenant, stream)).fetchone()
    row = {"id": str(uuid.uuid4()), "tenant": tenant, "stream": stream, "version": s[0] + 1,
           "position": head[0] + 1, "type": type_, "schema": 1, "time_us": head[1], "actor_user": "root",
           "actor_client": "", "clock": None, "payload": pack(data), "meta": None, "retention": retention,
           "prev_hash": bytes(s[1])}
    row["hash"] = row_hash(row)
    cols = ", ".join(row)
    db.execute(f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.execute("UPDATE streams SET version = ?, head_hash = ? WHERE tenant = ? AND stream = ?",
               (row["version"], row["hash"], tenant, stream))
    db.execute("UPDATE log_head SET position = ?", (row["position"],))


def _event(db, tenant, stream, version):
    return [r for r in _rows(db, tenant, stream) if r["version"] == version][0]


# ------------------------------------------------------------------ tamperings


def t_delete_last_event_and_fix_streams_row(db, ctx):
    last = db.execute("SELECT tenant, stream, version, position FROM events ORDER BY position DESC").fetchone()
    t, s, v, p = last
    db.execute("DELETE FROM events WHERE position = ?", (p,))
    prev = _event(db, t, s, v - 1)
    db.execute("UPDATE streams SET version = ?, head_hash = ? WHERE tenant = ? AND stream = ?",
               (v - 1, prev["hash"], t, s))
    db.execute("UPDATE log_head SET position = ?", (p - 1,))


def t_delete_whole_audit_stream(db, ctx):
    db.execute("DELETE FROM events WHERE stream = '$audit'")
    db.execute("DELETE FROM streams WHERE stream = '$audit'")


def t_delete_only_audit_streams_row(db, ctx):
    db.execute("DELETE FROM streams WHERE stream = '$audit'")


def t_edit_event_and_recompute_chain(db, ctx):
    r = _event(db, "acme", "ledger/1", 5)
    db.execute("UPDATE events SET payload = ? WHERE position = ?", (pack({"i": 999_999}), r["position"]))
    _rechain(db, "acme", "ledger/1")


def t_fake_prune_of_critical_audit_events(db, ctx):
    gone = _event(db, "acme", "$audit", 2)
    db.execute("DELETE FROM events WHERE tenant = 'acme' AND stream = '$audit' AND version <= 2")
    db.execute("UPDATE streams SET anchor_version = 2, anchor_hash = ? WHERE tenant = 'acme' AND stream = '$audit'",
               (gone["hash"],))
    db.execute("INSERT INTO prune_log (time_us, tenant, stream, from_version, to_version, count, anchor_position, "
               "anchor_hash) VALUES (?, 'acme', '$audit', 1, 2, 2, ?, ?)", (T0, gone["position"], gone["hash"]))


def t_fake_a_prune_of_standard_events(db, ctx):
    gone = _event(db, "acme", "ledger/1", 6)
    db.execute("DELETE FROM events WHERE tenant = 'acme' AND stream = 'ledger/1' AND version <= 6")
    db.execute("UPDATE streams SET anchor_version = 6, anchor_hash = ? WHERE tenant = 'acme' AND stream = 'ledger/1'",
               (gone["hash"],))
    db.execute("INSERT INTO prune_log (time_us, tenant, stream, from_version, to_version, count, anchor_position, "
               "anchor_hash) VALUES (?, 'acme', 'ledger/1', 5, 6, 2, ?, ?)", (T0, gone["position"], gone["hash"]))


def t_append_forged_audit_event(db, ctx):
    _append_forged(db, "acme", "$audit", "audit.cross-tenant-read", {"justification": "none needed"})


def t_edit_payload_without_fixing_chain(db, ctx):
    r = _event(db, "acme", "ledger/1", 6)
    db.execute("UPDATE events SET payload = ? WHERE position = ?", (pack({"i": -1}), r["position"]))


def t_reorder_two_events(db, ctx):
    a, b = _event(db, "acme", "ledger/1", 5)["position"], _event(db, "acme", "ledger/1", 6)["position"]
    db.execute("UPDATE events SET position = -1 WHERE position = ?", (a,))
    db.execute("UPDATE events SET position = ? WHERE position = ?", (a, b))
    db.execute("UPDATE events SET position = ? WHERE position = -1", (b,))


def t_change_a_position(db, ctx):
    r = _event(db, "acme", "ledger/1", 7)
    head = db.execute("SELECT position FROM log_head").fetchone()[0]
    db.execute("UPDATE events SET position = ? WHERE position = ?", (head + 100, r["position"]))


def t_delete_a_middle_event(db, ctx):
    db.execute("DELETE FROM events WHERE position = ?", (_event(db, "acme", "ledger/1", 6)["position"],))


def t_duplicate_a_critical_event(db, ctx):
    r = _event(db, "acme", "cmd/c1", 1)
    _append_forged(db, "acme", "cmd/c1", r["type"], {"amount": 5})


def t_downgrade_retention_and_recompute_chain(db, ctx):
    r = _event(db, "acme", "$audit", 1)
    db.execute("UPDATE events SET retention = 'standard' WHERE position = ?", (r["position"],))
    _rechain(db, "acme", "$audit")


def t_change_a_stream_head_hash(db, ctx):
    db.execute("UPDATE streams SET head_hash = ? WHERE tenant = 'globex' AND stream = 'ledger/1'", (b"\x01" * 32,))


def t_delete_a_middle_checkpoint(db, ctx):
    db.execute("DELETE FROM audit_checkpoints WHERE seq = 2")


def t_alter_a_checkpoint(db, ctx):
    db.execute("UPDATE audit_checkpoints SET critical = critical - 1 WHERE seq = (SELECT max(seq) - 1 "
               "FROM audit_checkpoints)")


def t_forge_a_checkpoint_signature(db, ctx):
    # Forge an audit event, then sign a checkpoint over it, chained correctly, with a key of
    # the attacker's own (they do not have ours).
    _append_forged(db, "acme", "$audit", "audit.cross-tenant-read", {"justification": "forged"})
    db.commit()

    async def sign():
        store = await open_store(f"sqlite+aiosqlite:///{ctx['path']}")
        try:
            return await write_checkpoint(store, ATTACKER)
        finally:
            await store.close()

    assert asyncio.run(sign()) is not None


def t_truncate_the_tail_with_its_checkpoints(db, ctx):
    # keep up to the checkpoint the prune signed; drop everything after it
    keep_seq, keep_pos = db.execute(
        "SELECT seq, position FROM audit_checkpoints WHERE pruned > 0 ORDER BY seq LIMIT 1").fetchone()
    db.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (keep_seq,))
    touched = db.execute("SELECT DISTINCT tenant, stream FROM events WHERE position > ?", (keep_pos,)).fetchall()
    db.execute("DELETE FROM events WHERE position > ?", (keep_pos,))
    for t, s in touched:
        left = db.execute("SELECT version, hash FROM events WHERE tenant = ? AND stream = ? ORDER BY version DESC",
                          (t, s)).fetchone()
        if left is None:
            db.execute("DELETE FROM streams WHERE tenant = ? AND stream = ? AND anchor_version = 0", (t, s))
        else:
            db.execute("UPDATE streams SET version = ?, head_hash = ? WHERE tenant = ? AND stream = ?",
                       (left[0], left[1], t, s))
    db.execute("UPDATE log_head SET position = ?", (keep_pos,))


# tampering -> the kinds verify may report for it (at least one must be reported)
TAMPERINGS = [
    (t_delete_last_event_and_fix_streams_row, {"checkpoint_ahead"}),
    (t_delete_whole_audit_stream, {"event_count_mismatch", "checkpoint_critical"}),
    (t_delete_only_audit_streams_row, {"stream_row_missing"}),
    (t_edit_event_and_recompute_chain, {"checkpoint_heads"}),
    (t_fake_prune_of_critical_audit_events, {"checkpoint_critical"}),
    (t_append_forged_audit_event, {"unsigned_critical"}),
    (t_fake_a_prune_of_standard_events, {"unsigned_prune"}),
    (t_edit_payload_without_fixing_chain, {"hash_mismatch"}),
    (t_reorder_two_events, {"out_of_order", "hash_mismatch"}),
    (t_change_a_position, {"position_beyond_head"}),
    (t_delete_a_middle_event, {"missing_event", "event_count_mismatch"}),
    (t_duplicate_a_critical_event, {"unsigned_critical"}),
    (t_downgrade_retention_and_recompute_chain, {"checkpoint_critical"}),
    (t_change_a_stream_head_hash, {"head_mismatch"}),
    (t_delete_a_middle_checkpoint, {"checkpoint_chain"}),
    (t_alter_a_checkpoint, {"checkpoint_signature"}),
    (t_forge_a_checkpoint_signature, {"checkpoint_signature"}),
]


def test_a_clean_copy_verifies_clean_with_and_without_the_export(signed_db, tmp_path):
    path = _copy(signed_db, tmp_path)
    assert _verify(path) == set()
    assert _verify(path, signed_db["checkpoints"]) == set()
    # prune records exist, and checkpoints were signed before and after the prune
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*), sum(count) FROM prune_log").fetchone() == (3, 9)
    assert db.execute("SELECT count(*) FROM audit_checkpoints WHERE pruned = 0").fetchone()[0] >= 1
    assert db.execute("SELECT count(*) FROM audit_checkpoints WHERE pruned = 9").fetchone()[0] >= 1


@pytest.mark.parametrize("tamper,expected", TAMPERINGS, ids=[t.__name__[2:] for t, _ in TAMPERINGS])
def test_each_tampering_is_reported(signed_db, tmp_path, tamper, expected):
    path = _copy(signed_db, tmp_path)
    db = sqlite3.connect(path)
    tamper(db, {"path": path})
    db.commit()
    db.close()
    found = _verify(path)
    assert found & expected, f"{tamper.__name__}: verify reported {sorted(found)}, expected one of {sorted(expected)}"


def test_truncating_the_tail_and_its_checkpoints_is_caught_by_the_export(signed_db, tmp_path):
    path = _copy(signed_db, tmp_path)
    db = sqlite3.connect(path)
    t_truncate_the_tail_with_its_checkpoints(db, {"path": path})
    db.commit()
    db.close()
    # Without the export the shortened log is self-consistent: that is why it is exported.
    assert _verify(path) == set()
    found = _verify(path, signed_db["checkpoints"])
    assert {"checkpoint_missing", "checkpoint_ahead"} <= found, found


def test_the_cli_verifies_exports_and_reports_kinds(signed_db, tmp_path, monkeypatch):
    path = _copy(signed_db, tmp_path)
    url = f"sqlite+aiosqlite:///{path}"
    pub = tmp_path / "audit.pub"
    pub.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for name in ("SYNCLINE_AUDIT_KEY", "SYNCLINE_AUDIT_KEY_FILE", "SYNCLINE_AUDIT_PUBLIC_KEYS"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    out = tmp_path / "cps.jsonl"
    r = runner.invoke(main, ["audit", "export", "--db", url, "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["seq"] for c in lines] == list(range(1, len(lines) + 1))
    ok = runner.invoke(main, ["verify", "--db", url, "--public-key", str(pub), "--against", str(out)])
    assert ok.exit_code == 0 and "verifies" in ok.output, ok.output
    # checkpoints but no key to check them: not a pass
    nokey = runner.invoke(main, ["verify", "--db", url])
    assert nokey.exit_code == 1 and "problem no_public_key" in nokey.output
    db = sqlite3.connect(path)
    t_truncate_the_tail_with_its_checkpoints(db, {"path": path})
    db.commit()
    db.close()
    bad = runner.invoke(main, ["verify", "--db", url, "--public-key", str(pub), "--against", str(out)])
    assert bad.exit_code == 1 and "problem checkpoint_missing" in bad.output, bad.output


def test_keygen_checkpoint_and_prune_sign_with_the_key_from_a_file(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path}/k.db"
    runner = CliRunner()
    r = runner.invoke(main, ["audit", "keygen", "--out", str(tmp_path / "audit.key")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(main, ["audit", "keygen", "--out", str(tmp_path / "audit.key")]).exit_code == 2

    async def fill():
        store = await open_store(url)
        await store.append("acme", "$audit", [crit("audit.command")])
        await store.close()

    asyncio.run(fill())
    monkeypatch.delenv("SYNCLINE_AUDIT_KEY", raising=False)
    monkeypatch.delenv("SYNCLINE_AUDIT_PUBLIC_KEYS", raising=False)
    monkeypatch.setenv("SYNCLINE_AUDIT_KEY_FILE", str(tmp_path / "audit.key"))
    # signing is expected (a key is configured) and nothing is signed yet
    unsigned = runner.invoke(main, ["verify", "--db", url])
    assert unsigned.exit_code == 1 and "problem no_checkpoints" in unsigned.output
    r = runner.invoke(main, ["audit", "checkpoint", "--db", url])
    assert r.exit_code == 0 and "checkpoint 1 at position 1" in r.output, r.output
    assert runner.invoke(main, ["verify", "--db", url]).exit_code == 0
    monkeypatch.setenv("SYNCLINE_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    bad = runner.invoke(main, ["audit", "checkpoint", "--db", url])
    assert bad.exit_code == 2 and "audit_key_invalid" in bad.output


async def test_signing_on_postgresql_catches_deletion_and_altered_checkpoints(pg_clean_url):
    store = await open_store(pg_clean_url, audit_key=KEY, audit_checkpoint_every=3)
    try:
        for i in range(5):
            await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": i})])
        for i in range(3):
            await store.append("acme", "$audit", [crit("audit.command", n=i)])
            await store.signer.sync()
        await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": 9})])
    finally:
        await store.close()
    store = await open_store(pg_clean_url)
    try:
        cps = await read_checkpoints(store)
        assert len(cps) >= 4 and cps[-1].position == 9 and cps[-1].critical == 3
        problems, stats = await verify_audit(store, PUBLIC, exported=cps, expect_signed=True)
        assert problems == [] and (await store.verify()).ok
        w, _ = store.engines
        from sqlalchemy import text

        async with w.begin() as conn:
            await conn.execute(text("DELETE FROM events WHERE stream = '$audit'"))
            await conn.execute(text("DELETE FROM streams WHERE stream = '$audit'"))
            await conn.execute(text("UPDATE audit_checkpoints SET position = position + 1 WHERE seq = 1"))
        problems, _ = await verify_audit(store, PUBLIC, exported=cps, expect_signed=True)
        kinds = {p.kind for p in problems}
        assert {"event_count_mismatch", "checkpoint_critical", "checkpoint_signature", "checkpoint_altered"} <= kinds
    finally:
        await store.close()


async def test_a_checkpoint_is_signed_at_least_every_n_events(tmp_path):
    from waiting import until

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/n.db", audit_key=KEY, audit_checkpoint_every=5)
    try:
        for i in range(12):
            await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": i})])
        # no critical event, no command: only the count of events asks for checkpoints
        await until(lambda: store.signer.last is not None and store.signer.last.position >= 10, 10,
                    "a checkpoint past 10 events")
        assert store.signer.written <= 3
    finally:
        await store.close()
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/n.db")
    try:
        cps = await read_checkpoints(store)
        assert cps[-1].position == 12  # the store's close signed the rest
        assert (await verify_audit(store, PUBLIC, expect_signed=True))[0] == []
    finally:
        await store.close()


async def test_prunes_before_the_migration_are_backfilled_as_prune_records(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    now = [T0]
    store = await open_store(url, clock_us=lambda: now[0])
    for i in range(4):
        await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": i})])
    now[0] += 10 * DAY_US
    await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": 9})])
    assert (await store.prune(retention_s=7 * 86400, now_us=now[0])).events_deleted == 4
    await store.close()
    # make it a database pruned under revision 0004: no prune records, no checkpoint table
    db = sqlite3.connect(f"{tmp_path}/old.db")
    db.execute("DROP TABLE prune_log")
    db.execute("DROP TABLE audit_checkpoints")
    db.execute("UPDATE alembic_version SET version_num = '0004'")
    db.commit()
    db.close()
    store = await open_store(url)  # migrates to 0005
    try:
        problems, stats = await verify_audit(store, {})
        assert problems == [] and stats["pruned"] == 4
        # and a signer can start on it
        cp = await write_checkpoint(store, KEY)
        assert cp is not None and cp.pruned == 4 and cp.position == 5
        assert (await verify_audit(store, PUBLIC, expect_signed=True))[0] == []
    finally:
        await store.close()


def test_the_gateway_signs_every_class_d_command_before_answering(tmp_path):
    api_tests = str(Path(__file__).resolve().parents[1] / "api")
    if api_tests not in sys.path:
        sys.path.insert(0, api_tests)
    from api_support import RunningGateway, base_settings

    db = tmp_path / "gw.db"
    srv = RunningGateway(base_settings(f"sqlite+aiosqlite:///{db}", audit_key=bytes(range(32)).hex(),
                                       audit_checkpoint_every=1_000_000)).start()
    try:
        with httpx.Client(base_url=srv.url, headers=srv.headers(tenant="acme", user="alice")) as c:
            for i in range(3):
                r = c.post("/v1/commands/order.placed", json={"amount": i}, headers={"Idempotency-Key": f"k{i}"})
                assert r.status_code == 202, r.text
                newest = srv.call(read_checkpoints(srv.gw.store))[-1]
                # the command event and its audit event (the next position) are both signed
                assert newest.position >= r.json()["position"] + 1
                assert newest.critical >= 2 * (i + 1)
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "syncline_audit_checkpoint_failures 0.0" in metrics
        written = [ln for ln in metrics.splitlines() if ln.startswith("syncline_audit_checkpoints_written ")]
        assert float(written[0].split()[1]) >= 3
    finally:
        srv.stop()

    async def check():
        store = await open_store(f"sqlite+aiosqlite:///{db}")
        try:
            return (await verify_audit(store, PUBLIC, expect_signed=True))[0], (await store.verify()).ok
        finally:
            await store.close()

    assert asyncio.run(check()) == ([], True)


async def test_key_rotation_chains_on_and_verifiers_keep_the_old_public_key(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/rot.db"
    new_key = Ed25519PrivateKey.generate()
    for key in (KEY, new_key):  # the second run is the gateway restarted with a new key
        store = await open_store(url, audit_key=key)
        await store.append("acme", "$audit", [crit("audit.command")])
        await store.close()
    store = await open_store(url)
    try:
        cps = await read_checkpoints(store)
        assert [c.key for c in cps] == [key_id(KEY.public_key()), key_id(new_key.public_key())]
        both = {**PUBLIC, key_id(new_key.public_key()): new_key.public_key()}
        assert (await verify_audit(store, both, expect_signed=True))[0] == []
        only_new = {key_id(new_key.public_key()): new_key.public_key()}
        problems, _ = await verify_audit(store, only_new, expect_signed=True)
        assert [(p.kind, p.seq) for p in problems] == [("checkpoint_signature", 1)]
    finally:
        await store.close()
