"""Activity feeds, presence history and stream statistics over REST (api/activity.py,
api/routes_activity.py), on a real gateway: folded from the log the gateway writes,
paginated newest first, scoped to the token's tenant, rebuilt after a restart."""
from __future__ import annotations

import httpx
from api_wsclient import NativeClient
from waiting import wait_for

from syncline.engine import protocol as P


def _append(c: httpx.Client, stream: str, *types: str) -> None:
    r = c.post(f"/v1/streams/{stream}", json={"events": [{"type": t, "data": {"n": i}} for i, t in enumerate(types)]})
    assert r.status_code == 201, r.text


def _caught_up_to(c: httpx.Client, position: int):
    def check():
        r = c.get("/v1/feeds/users/nobody").json()
        return r["caught_up"] and r["position"] >= position and r
    return check


def _head(c: httpx.Client) -> int:
    return c.get("/v1/log", params={"limit": 1}).json()["head"]


def test_user_and_room_feeds_are_the_log_newest_first_and_page_by_cursor(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as alice, \
            httpx.Client(base_url=srv.url, headers=srv.headers(user="bob")) as bob:
        _append(alice, "task/1", "task.created", "task.renamed")
        _append(bob, "room/lobby", "chat.said")
        _append(alice, "room/lobby", "chat.said", "chat.said")
        _append(alice, "task/2", "task.created")
        wait_for(_caught_up_to(alice, _head(alice)), 10, "the projections to reach the head")

        feed = alice.get("/v1/feeds/users/alice").json()
        assert [(i["stream"], i["type"]) for i in feed["items"]] == [
            ("task/2", "task.created"), ("room/lobby", "chat.said"), ("room/lobby", "chat.said"),
            ("task/1", "task.renamed"), ("task/1", "task.created")]
        assert all(i["user"] == "alice" for i in feed["items"]) and feed["next_before"] is None
        positions = [i["position"] for i in feed["items"]]
        assert positions == sorted(positions, reverse=True)

        # pages of two, by cursor, give the same items
        seen, before = [], None
        while True:
            params = {"limit": 2, **({"before": before} if before else {})}
            page = alice.get("/v1/feeds/users/alice", params=params).json()
            seen += page["items"]
            before = page["next_before"]
            if before is None:
                break
        assert seen == feed["items"]

        room = bob.get("/v1/feeds/rooms/lobby").json()
        assert [(i["user"], i["type"]) for i in room["items"]] == [
            ("alice", "chat.said"), ("alice", "chat.said"), ("bob", "chat.said")]
        assert bob.get("/v1/feeds/users/carol").json()["items"] == []


def test_stream_stats_count_versions_and_types(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as c:
        _append(c, "task/9", "task.created", "task.renamed", "task.renamed")
        wait_for(_caught_up_to(c, _head(c)), 10, "the projections to reach the head")
        st = c.get("/v1/stats/streams/task/9").json()
        assert st["events"] == 3 and st["version"] == 3 and st["first_position"] < st["last_position"]
        assert st["types"] == {"task.created": 1, "task.renamed": 2}
        missing = c.get("/v1/stats/streams/task/none")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        bad = c.get("/v1/stats/streams/NOT A STREAM")
        assert bad.status_code == 400 and bad.json()["code"]
        # system streams need admin, as for reading them
        assert c.get("/v1/stats/streams/$security").status_code == 403


async def test_room_history_records_joins_and_leaves_over_the_websocket(srv):
    a = await NativeClient.connect(srv.ws_url, srv.token(user="alice"))
    b = await NativeClient.connect(srv.ws_url, srv.token(user="bob"))
    for c in (a, b):
        await c.expect(P.WELCOME)
    await a.send(P.JOIN, room="lobby")
    await a.expect(P.JOINED)
    await b.send(P.JOIN, room="lobby")
    await b.expect(P.JOINED)
    await a.send(P.LEAVE, room="lobby")
    await a.expect(P.LEFT)
    for c in (a, b):
        await c.close()
    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers()) as c:
        head = (await c.get("/v1/log", params={"limit": 1})).json()["head"]

        async def caught_up():
            r = (await c.get("/v1/rooms/lobby/history")).json()
            return r["caught_up"] and r["position"] >= head and r
        from waiting import until
        hist = await until(caught_up, 10, "the presence history to reach the head")
    assert [(h["user"], h["kind"]) for h in hist["changes"]] == [
        ("alice", "left"), ("bob", "joined"), ("alice", "joined"),
    ]
    assert hist["present"] == ["bob"]


def test_bad_input_gets_codes_not_crashes(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers()) as c:
        for path, params in [("/v1/feeds/rooms/bad room", {}), ("/v1/rooms/bad room/history", {}),
                             ("/v1/feeds/users/alice", {"limit": 0}), ("/v1/feeds/users/alice", {"limit": 501}),
                             ("/v1/feeds/users/alice", {"before": "x"}), ("/v1/feeds/users/" + "u" * 201, {})]:
            r = c.get(path, params=params)
            assert r.status_code == 400 and r.json()["code"], (path, params, r.text)


def test_a_restarted_gateway_folds_the_log_again(gateway, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/restart.db"
    first = gateway(database_url=db)
    with httpx.Client(base_url=first.url, headers=first.headers(user="alice")) as c:
        _append(c, "task/1", "task.created", "task.renamed")
        head = _head(c)
    first.stop()
    second = gateway(database_url=db)
    with httpx.Client(base_url=second.url, headers=second.headers(user="alice")) as c:
        wait_for(_caught_up_to(c, head), 10, "the projections to fold the log again")
        assert [i["type"] for i in c.get("/v1/feeds/users/alice").json()["items"]] == ["task.renamed", "task.created"]


def test_turned_off_the_routes_answer_empty_and_not_caught_up(gateway):
    srv = gateway(activity_projections=False)
    with httpx.Client(base_url=srv.url, headers=srv.headers(user="alice")) as c:
        _append(c, "task/1", "task.created")
        r = c.get("/v1/feeds/users/alice").json()
        assert r["items"] == [] and r["caught_up"] is False and r["position"] == 0


def test_another_tenant_sees_none_of_it_once_it_is_folded(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers(tenant="acme", user="alice")) as a:
        _append(a, "room/lobby", "chat.said")
        _append(a, "secret/1", "note.added")
        wait_for(_caught_up_to(a, _head(a)), 10, "the projections to reach the head")
        assert a.get("/v1/feeds/users/alice").json()["items"]  # acme sees its own
        assert a.get("/v1/feeds/rooms/lobby").json()["items"]
        assert a.get("/v1/stats/streams/secret/1").status_code == 200
    with httpx.Client(base_url=srv.url, headers=srv.headers(tenant="globex", user="alice")) as b:
        assert b.get("/v1/feeds/users/alice").json()["items"] == []
        assert b.get("/v1/feeds/rooms/lobby").json()["items"] == []
        assert b.get("/v1/stats/streams/secret/1").status_code == 404
        r = b.get("/v1/feeds/users/alice", headers={"X-Tenant": "acme"})
        assert r.status_code == 403 and r.json()["code"] == "tenant_violation"


class _FlakyStore:
    """A real store whose ``read_log`` fails on the given calls (1-based), as a database
    going away would."""

    def __init__(self, store, failing: set[int]) -> None:
        self._store, self._failing, self.calls = store, failing, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def read_log(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self._failing:
            from syncline.engine.errors import StoreUnavailable
            raise StoreUnavailable("the database went away (injected)")
        return await self._store.read_log(*args, **kwargs)


async def test_the_runner_recovers_from_failed_reads_without_folding_anything_twice(tmp_path, monkeypatch):
    from waiting import until

    from syncline.api import activity
    from syncline.engine.events import Actor, NewEvent
    from syncline.store import open_store

    monkeypatch.setattr(activity, "RETRY_MIN_S", 0.01)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/flaky.db")
    try:
        for i in range(30):
            await store.append("acme", f"task/{i % 4}", [NewEvent("task.touched", {"i": i}, actor=Actor("alice"))])
        flaky = _FlakyStore(store, failing={3, 4})  # after two pages of ten were folded
        runner = activity.ActivityProjections(flaky, batch=10)
        runner.start()
        try:
            await until(lambda: runner.caught_up and runner.position == 30, 10, "the runner to recover and catch up")
            # the failed reads were not folded: it went on from its checkpoint, no restart
            assert runner.failures >= 1 and runner.restarts == 0
            feed = runner.feeds().by_user[("acme", "alice")]
            assert [item[0] for item in feed] == list(range(1, 31))  # each event once, in order
            assert sum(runner.stream_stat("acme", f"task/{k}").events for k in range(4)) == 30
            # and live: a new event arrives through the tail
            await store.append("acme", "task/0", [NewEvent("task.touched", {}, actor=Actor("alice"))])
            await until(lambda: runner.position == 31, 10, "the tail to deliver the new event")
            assert len(runner.feeds().by_user[("acme", "alice")]) == 31
        finally:
            await runner.close()
    finally:
        await store.close()


async def test_after_a_failed_fold_the_runner_starts_again_from_zero_and_serves_the_old_states_meanwhile(
        tmp_path, monkeypatch):
    import dataclasses

    from waiting import until

    from syncline.api import activity
    from syncline.engine.events import Actor, NewEvent
    from syncline.store import open_store

    monkeypatch.setattr(activity, "RETRY_MIN_S", 0.5)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/fold.db")
    try:
        for i in range(30):
            await store.append("acme", "task/1", [NewEvent("task.touched", {"i": i}, actor=Actor("alice"))])
        runner = activity.ActivityProjections(store, batch=10)
        feeds = runner.projector.projections[0]
        assert feeds.name == "feeds"
        calls = {"n": 0}

        def flaky(state, events):  # the second page: three of its events, then an error
            calls["n"] += 1
            if calls["n"] == 2:
                feeds.apply_many(state, events[:3])
                raise RuntimeError("a fold failed (injected)")
            return feeds.apply_many(state, events)

        runner.projector.projections[0] = dataclasses.replace(feeds, apply_many=flaky)
        runner.start()
        try:
            await until(lambda: runner.restarts == 1, 5, "the failed fold")
            # meanwhile: the states as they were, marked as not caught up
            assert not runner.caught_up and runner.position == 10
            assert len(runner.feeds().by_user[("acme", "alice")]) == 13
            await until(lambda: runner.caught_up and runner.position == 30, 10, "the restart to catch up")
            assert [item[0] for item in runner.feeds().by_user[("acme", "alice")]] == list(range(1, 31))
            assert runner.stream_stat("acme", "task/1").events == 30
        finally:
            await runner.close()
    finally:
        await store.close()
