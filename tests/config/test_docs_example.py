"""docs/examples/syncline.toml, run: two client-kit replicas conflict, and the outcome follows the file.

The test reads the docs' file itself (and its custom merge module, shipped beside it), so
the example cannot drift from what the server does. The server is the real ``syncline
serve --config docs/examples/syncline.toml`` on a real port; the clients load the
resolution rules from it (GET /v1/config/resolution) instead of being given them.
"""
from __future__ import annotations

import sys
import time
import tomllib

import pytest
from config_support import EXAMPLES, token

from syncline.clientkit.client import SynclineClient
from syncline.clientkit.rules import ResolutionMismatch
from syncline.engine.records import MANUAL, CollectionPolicy, ResolutionConfig

DOCS_CONFIG = EXAMPLES / "syncline.toml"
STREAM = "rec/tasks/launch"


@pytest.fixture(autouse=True)
def _examples_importable():
    """The clients import the custom merge the server names, as the docs tell users to."""
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def _clock(offset_ms: int):
    return lambda: time.time_ns() // 1_000_000 + offset_ms


def test_the_docs_file_chooses_manual_and_a_custom_merge():
    fields = tomllib.loads(DOCS_CONFIG.read_text())["resolution"]["collections"]["tasks"]["fields"]
    assert fields["title"] == "manual"
    assert fields["due"] == "syncline_example_merges:earliest"


async def test_two_replicas_conflict_and_the_outcome_follows_the_file(configured_server, tmp_path):
    server = configured_server(DOCS_CONFIG)
    # Both write while offline, so neither has seen the other's write: both fields conflict.
    # Bob writes later (his clock is ahead): last-writer-wins would keep Bob's values, so
    # the outcome below can only come from the file's rules.
    alice = SynclineClient(server.url, token("alice"), user="alice", clock_ms=_clock(0))
    bob = SynclineClient(server.url, token("bob"), user="bob", clock_ms=_clock(5_000))
    alice.set(STREAM, {"title": "Launch v1", "due": "2026-01-15"})
    bob.set(STREAM, {"title": "Launch v1.0 (final)", "due": "2026-02-01"})
    try:
        await alice.start()
        await bob.start()
        # The rules came from the server, not from the test.
        assert alice.rules is not None and alice.rules == bob.rules
        assert alice.rules["collections"]["tasks"]["fields"]["due"] == "syncline_example_merges:earliest"
        for c in (alice, bob):
            await c.wait_synced(30)
        for c in (alice, bob):
            await c.wait_until(lambda c=c: any(x.field == "title" for x in c.conflicts())
                               and c.get(STREAM).get("due") == "2026-01-15", 30)
        for c in (alice, bob):
            # custom merge: the earliest date, whoever wrote last
            assert c.get(STREAM)["due"] == "2026-01-15"
            # manual: an open conflict with both versions, nothing decided for the user
            [conflict] = [x for x in c.conflicts() if x.field == "title"]
            assert sorted(w.value for w in conflict.versions) == ["Launch v1", "Launch v1.0 (final)"]
            assert all(x.field != "due" for x in c.conflicts())
    finally:
        await alice.close()
        await bob.close()


async def test_a_client_config_that_disagrees_is_refused(configured_server):
    server = configured_server(DOCS_CONFIG)
    wrong = ResolutionConfig({"tasks": CollectionPolicy(fields={"title": MANUAL})},
                             default_collection=CollectionPolicy())
    client = SynclineClient(server.url, token("carol"), user="carol", config=wrong)
    with pytest.raises(ResolutionMismatch) as e:
        await client.start()
    assert e.value.code == "resolution_mismatch"
    client.queue.close()


async def test_the_rules_are_kept_for_an_offline_restart(configured_server, tmp_path):
    server = configured_server(DOCS_CONFIG)
    queue = tmp_path / "dave.queue.db"
    dave = SynclineClient(server.url, token("dave"), user="dave", queue_path=queue)
    await dave.start()
    assert dave.stats["rules_loads"] == 1
    await dave.close()
    server.stop()
    # The server is gone: the restarted client predicts with the rules it loaded last time.
    again = SynclineClient(server.url, token("dave"), user="dave", queue_path=queue)
    rule = again.core.replica.config.field_rule("tasks", "due")
    assert rule is not None and rule[1].name == "syncline_example_merges:earliest"
    await again.start()  # (unreachable: not an error, it works offline)
    again.set(STREAM, {"due": "2026-01-20"})
    again.set(STREAM, {"due": "2026-03-01"})
    assert again.get(STREAM)["due"] == "2026-01-20"  # merged locally: the earliest, not the last written
    assert again.rules is None and again.stats["rules_failures"] == 0
    await again.close()
