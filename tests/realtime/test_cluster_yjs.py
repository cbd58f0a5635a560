"""Two `syncline serve` processes on PostgreSQL + Redis behind a round-robin TCP proxy
(issue 13, part 2). Real Yjs clients — JavaScript ``yjs`` + ``y-websocket`` from npm and
``pycrdt.Provider`` — connect THROUGH the proxy, so consecutive clients land on different
gateways. One cluster serves the whole module (each scenario has its own document);
the restart scenario comes last.

Scenarios: text sync, concurrent edits at one position, offline edits and reconnect, late
joiner, a burst of 500 small updates, one 256 KiB update, nested types, undo of a remote
change, awareness set and removed, persistence across a restart of both gateways.
"""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pycrdt
import pytest
from cluster import pg_redis_cluster
from rtclients import AwarenessWatcher, Scenario, log_updates, replay, sha, text_of, until

SYNC_S = 8  # every scenario converges in well under a second when it works


@pytest.fixture(scope="module")
def pgc(tmp_path_factory, pg_server, redis_server, rt_gateways):
    with pg_redis_cluster(tmp_path_factory.mktemp("pg-redis"), pg_server, redis_server, n=rt_gateways) as c:
        yield c


def _log_text(pgc, doc: str) -> str:
    return text_of(replay(log_updates(pgc[0], doc)))


async def test_gateways_are_ready_with_redis(pgc):
    for g in pgc.gateways:
        body = g.readyz()
        assert body["dependencies"]["store"]["state"] == "up", body
        assert body["dependencies"]["redis"]["state"] == "up", body


async def test_text_sync(pgc, js):
    async with Scenario(pgc, js, "text-sync") as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        await s.add_js("j2")
        s.assert_split()
        await js.call("insert", id="j1", index=0, text="hello")
        await s.wait_agree(SYNC_S, "j1's first edit", lambda t: t == "hello")
        p1.get("text", type=pycrdt.Text).insert(5, " world")
        await s.wait_agree(SYNC_S, "p1's edit", lambda t: t == "hello world")
        await js.call("insert", id="j2", index=-1, text="!")
        final = await s.wait_agree(SYNC_S, "j2's edit", lambda t: t == "hello world!")
    assert _log_text(pgc, "text-sync") == final


async def test_concurrent_edits_at_one_position(pgc, js):
    async with Scenario(pgc, js, "same-spot") as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        await s.add_js("j2")
        p2 = await s.add_py("p2")
        s.assert_split()
        await js.call("insert", id="j1", index=0, text="[]")
        await s.wait_agree(SYNC_S, "the base text", lambda t: t == "[]")
        # everyone inserts at index 1 at once
        tokens = ["J1", "J2", "P1", "P2"]
        p1.get("text", type=pycrdt.Text).insert(1, "P1")
        p2.get("text", type=pycrdt.Text).insert(1, "P2")
        await asyncio.gather(js.call("insert", id="j1", index=1, text="J1"),
                             js.call("insert", id="j2", index=1, text="J2"))
        final = await s.wait_agree(
            SYNC_S, "four concurrent inserts at one position",
            lambda t: len(t) == 10 and t[0] == "[" and t[-1] == "]" and all(t.count(k) == 1 for k in tokens))
    assert _log_text(pgc, "same-spot") == final


async def test_offline_edits_and_reconnect(pgc, js):
    async with Scenario(pgc, js, "offline") as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        s.assert_split()
        tp = p1.get("text", type=pycrdt.Text)
        await js.call("insert", id="j1", index=0, text="base;")
        await s.wait_agree(SYNC_S, "the base text", lambda t: t == "base;")
        landed = []
        for round_ in (1, 2):  # the proxy sends the two reconnects to different gateways
            await js.call("disconnect", id="j1")
            await js.call("insert", id="j1", index=-1, text=f"js-offline-{round_};")
            tp.insert(len(tp), f"py-online-{round_};")
            await asyncio.sleep(0.3)
            assert f"js-offline-{round_};" not in text_of(p1)
            landed.append(await s.reconnect_js("j1"))
            final = await s.wait_agree(
                SYNC_S, f"offline round {round_} (j1 reconnected to gw{landed[-1]})",
                lambda t, r=round_: all(f"{w}-{i};" in t for i in range(1, r + 1)
                                        for w in ("js-offline", "py-online")))
        if len(pgc) > 1:
            assert len(set(landed)) == 2, s.placement()
    assert _log_text(pgc, "offline") == final


async def test_late_joiner(pgc, js):
    doc = "late"
    async with Scenario(pgc, js, doc) as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        await js.call("insert", id="j1", index=0, text="from-js;")
        await js.call("mapSet", id="j1", key="k", value="v")
        p1.get("text", type=pycrdt.Text).insert(0, "from-py;")
        await until(lambda: len(log_updates(pgc[0], doc)) >= 3, 5, "the three edits in the log")
    expected = _log_text(pgc, doc)
    assert sorted(expected.split(";")) == ["", "from-js", "from-py"], expected
    # Late joiners, one on each gateway, get everything; a second round to be sure both
    # gateways answer with the whole document.
    async with Scenario(pgc, js, doc) as late:
        for i in range(len(pgc)):
            await late.add_js(f"late-js{i}")
            await late.add_py(f"late-py{i}")
        late.assert_split()
        await late.wait_agree(SYNC_S, "late joiners", lambda t: t == expected)
        for cid in late.js_ids:
            assert (await js.state(cid))["map"] == {"k": "v"}, late.placement()
        for name, d in late.py.items():
            assert d.get("map", type=pycrdt.Map).to_py() == {"k": "v"}, (name, late.placement())


async def test_burst_of_500_small_updates(pgc, js):
    async with Scenario(pgc, js, "burst") as s:
        await s.add_js("writer")
        await s.add_py("p-other")
        await s.add_js("j-same")
        await s.add_js("j-other")
        s.assert_split()
        await js.call("burst", id="writer", n=500)
        final = await s.wait_agree(20, "a burst of 500 one-character updates", length=500)
    updates = log_updates(pgc[0], "burst")
    assert len(updates) >= 500 and text_of(replay(updates)) == final


async def test_one_256kib_update(pgc, js):
    big = ("abcdefghijklmnopqrstuvwxyz0123456789" * 8000)[:256 * 1024]
    async with Scenario(pgc, js, "big") as s:
        await s.add_js("writer")
        p1 = await s.add_py("p-other")
        await s.add_js("j-same")
        await s.add_js("j-other")
        s.assert_split()
        await js.call("insert", id="writer", index=0, text=big)
        await s.wait_agree(SYNC_S, "one 256 KiB update", length=len(big))
        assert sha(text_of(p1)) == sha(big)
    assert sha(_log_text(pgc, "big")) == sha(big)


async def test_nested_types(pgc, js):
    async with Scenario(pgc, js, "nested") as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        s.assert_split()
        await js.call("nestedInit", id="j1")
        root = p1.get("map", type=pycrdt.Map)
        await until(lambda: "nested" in root and "note" in root["nested"], SYNC_S, "the nested map at p1")
        nested = root["nested"]
        nested["list"].append(2)
        note = nested["note"]
        note.insert(len(note), "+py")
        await js.call("nestedEdit", id="j1", push=3, note="+js")
        expected_list = sorted([1, 2, 3])

        async def agree() -> bool:
            js_map = (await js.state("j1"))["map"]
            py_map = root.to_py()
            return (js_map == py_map and sorted(py_map["nested"]["list"]) == expected_list
                    and sorted(py_map["nested"]["note"]) == sorted("note+py+js"))
        try:
            await until(agree, SYNC_S, "the nested types to agree")
        except TimeoutError as e:
            raise AssertionError(f"{e}: js {(await js.state('j1'))['map']} vs py {root.to_py()} "
                                 f"({s.placement()})") from None
        final = root.to_py()
    logged = replay(log_updates(pgc[0], "nested")).get("map", type=pycrdt.Map).to_py()
    assert logged == final


async def test_undo_of_a_remote_change(pgc, js):
    async with Scenario(pgc, js, "undo") as s:
        await s.add_js("j1")
        p1 = await s.add_py("p1")
        await s.add_js("j2")
        s.assert_split()
        # j1's undo manager tracks the changes its provider applies: p1's edits, made on
        # the other gateway, are remote changes j1 can undo.
        await js.call("undoManager", id="j1", remote=True)
        await js.call("insert", id="j1", index=0, text="base;")
        await s.wait_agree(SYNC_S, "the base text", lambda t: t == "base;")
        tp = p1.get("text", type=pycrdt.Text)
        tp.insert(len(tp), "remote;")
        await s.wait_agree(SYNC_S, "p1's remote edit", lambda t: t == "base;remote;")
        assert (await js.call("undo", id="j1"))["undone"]
        await s.wait_agree(SYNC_S, "j1 undoing p1's edit", lambda t: t == "base;")
        # and a local change undone is undone everywhere too
        await js.call("insert", id="j1", index=-1, text="local;")
        await s.wait_agree(SYNC_S, "j1's local edit", lambda t: t == "base;local;")
        assert (await js.call("undo", id="j1"))["undone"]
        final = await s.wait_agree(SYNC_S, "j1 undoing its own edit", lambda t: t == "base;")
    assert _log_text(pgc, "undo") == final


async def test_awareness_set_and_removed(pgc, js):
    """Each JS client's awareness state is seen, then seen removed (set to null, and on
    disconnect), by a JS client and a pycrdt-side watcher on the OTHER gateway; both ways."""
    doc = "aware"
    async with Scenario(pgc, js, doc) as s, AsyncExitStack() as stack:
        watchers: dict[int, AwarenessWatcher] = {}
        for name in ("jA", "jB"):
            await s.add_js(name)
        for i in range(len(pgc)):
            w = await stack.enter_async_context(AwarenessWatcher(pgc.proxy.ws_url, doc, user=f"watcher{i}"))
            s.where[f"watcher{i}"] = pgc.proxy.last()
            watchers[pgc.proxy.last()] = w
        s.assert_split()
        assert set(watchers) == set(range(len(pgc))), s.placement()

        async def check(setter: str, user: str, present: bool, step: str) -> None:
            observer = "jB" if setter == "jA" else "jA"
            watcher = watchers[next(i for i in watchers if i != s.where[setter] or len(pgc) == 1)]

            async def seen() -> bool:
                js_users = {a.get("user") for a in (await js.state(observer))["awareness"]}
                return (user in js_users) == present and (user in watcher.users()) == present
            try:
                await until(seen, SYNC_S, f"{step} ({setter}'s state {'seen' if present else 'gone'})")
            except TimeoutError as e:
                obs = (await js.state(observer))["awareness"]
                raise AssertionError(f"{e}: {observer} sees {obs}, the watcher {watcher.states} "
                                     f"({s.placement()})") from None

        for setter in ("jA", "jB"):
            user = f"{setter}-user"
            await js.call("awareness", id=setter, state={"user": user, "cursor": 3})
            await check(setter, user, True, "an awareness state set")
            await js.call("awareness", id=setter, state=None)
            await check(setter, user, False, "an awareness state set to null")
            await js.call("awareness", id=setter, state={"user": user + "-again"})
            await check(setter, user + "-again", True, "an awareness state set again")
        # disconnecting removes the state: jA's (seen by jB and the watcher on jB's
        # gateway), then jB's (seen by the watcher on jA's gateway)
        for setter in ("jA", "jB"):
            await s.close_js(setter)
            user = f"{setter}-user-again"
            observer = "jB" if setter == "jA" else None
            watcher = watchers[next(i for i in watchers if i != s.where[setter] or len(pgc) == 1)]

            async def gone(observer=observer, watcher=watcher, user=user) -> bool:
                if observer and user in {a.get("user") for a in (await js.state(observer))["awareness"]}:
                    return False
                return user not in watcher.users()
            try:
                await until(gone, SYNC_S, f"{setter}'s awareness state removed when it disconnects")
            except TimeoutError as e:
                seen = (await js.state(observer))["awareness"] if observer else None
                raise AssertionError(f"{e}: jB sees {seen}, the watcher {watcher.states} ({s.placement()})") \
                    from None


async def test_persistence_across_a_restart_of_both_gateways(pgc, js):
    """Last in the module: it restarts the cluster. Two documents, so that the last edit
    before the restart comes from one gateway's client in one and from the other's in the
    other (a gateway that snapshots a document it holds only part of, at its own last
    position, loses the rest)."""
    expected: dict[str, str] = {}
    for doc, last in (("persist-a", "js"), ("persist-b", "py")):
        async with Scenario(pgc, js, doc) as s:
            await s.add_js("j1")
            p1 = await s.add_py("p1")
            s.assert_split()
            tp = p1.get("text", type=pycrdt.Text)
            for i in range(5):
                await js.call("insert", id="j1", index=-1, text=f"js{i};")
                await until(lambda n=2 * i + 1, doc=doc: len(log_updates(pgc[0], doc)) >= n,
                            5, f"edit {2 * i + 1} logged")
                tp.insert(len(tp), f"py{i};")
                await until(lambda n=2 * i + 2, doc=doc: len(log_updates(pgc[0], doc)) >= n,
                            5, f"edit {2 * i + 2} logged")
            if last == "js":
                await js.call("insert", id="j1", index=-1, text="js-last;")
            else:
                tp.insert(len(tp), "py-last;")
            await until(lambda doc=doc: len(log_updates(pgc[0], doc)) >= 11, 5, "the last edit logged")
            await asyncio.sleep(0.3)
        expected[doc] = _log_text(pgc, doc)
        assert all(f"js{i};" in expected[doc] and f"py{i};" in expected[doc] for i in range(5)), expected
    pgc.restart()
    for g in pgc.gateways:
        await until(lambda g=g: g.redis_state() == "up", 15, f"{g.name} redis up after the restart")
    for doc, text in expected.items():
        async with Scenario(pgc, js, doc) as after:
            for i in range(len(pgc)):
                await after.add_js(f"after-js{i}")
                await after.add_py(f"after-py{i}")
            after.assert_split()
            await after.wait_agree(SYNC_S, f"new clients of {doc} after the restart", lambda t, x=text: t == x)
        assert _log_text(pgc, doc) == text
