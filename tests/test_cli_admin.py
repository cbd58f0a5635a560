"""`syncline token`, `verify` and `prune` end to end on a real SQLite file."""
from __future__ import annotations

import asyncio
import sqlite3

import jwt
from click.testing import CliRunner

from syncline.cli import main
from syncline.engine.events import NewEvent
from syncline.store import open_store


def test_token_is_signed_with_the_configured_secret(monkeypatch):
    monkeypatch.setenv("SYNCLINE_JWT_SECRET", "a-test-secret-that-is-32-bytes-long!")
    out = CliRunner().invoke(main, ["token", "--tenant", "acme", "--user", "alice", "--role", "admin"])
    assert out.exit_code == 0
    claims = jwt.decode(out.output.strip(), "a-test-secret-that-is-32-bytes-long!", algorithms=["HS256"])
    assert (claims["tenant"], claims["sub"], claims["roles"]) == ("acme", "alice", ["admin"])
    bad = CliRunner().invoke(main, ["token", "--tenant", "../etc", "--user", "alice"])
    assert bad.exit_code != 0


def test_verify_finds_tampering_and_prune_reports(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/log.db"

    async def fill():
        store = await open_store(url)
        for i in range(3):
            await store.append("acme", "ledger/1", [NewEvent("entry.made", {"i": i})])
        await store.close()

    asyncio.run(fill())
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", "--db", url])
    assert ok.exit_code == 0 and "verifies" in ok.output
    db = sqlite3.connect(f"{tmp_path}/log.db")
    db.execute("UPDATE events SET payload = x'81a169cd03e7' WHERE version = 2")
    db.commit()
    db.close()
    broken = runner.invoke(main, ["verify", "--db", url])
    assert broken.exit_code == 1 and "hash_mismatch" in broken.output
    unknown = runner.invoke(main, ["verify", "--db", url, "--tenant", "nobody"])
    assert unknown.exit_code == 2 and "unknown_tenant" in unknown.output
    pruned = runner.invoke(main, ["prune", "--db", url, "--retention-days", "7"])
    assert pruned.exit_code == 0 and "deleted 0 events" in pruned.output
