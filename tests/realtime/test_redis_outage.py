"""A burst of 500 updates with Redis killed in the middle (issue 13, part 2): two gateways
on PostgreSQL + a private Redis, clients through the round-robin proxy. Redis is only a
doorbell, so

- every client converges once the log is polled (while Redis is still down);
- nothing is lost: the clients hold exactly what the log replays to;
- ``/readyz`` reports Redis down (status ``degraded``) during the outage and ``up``
  (status ``ready``) again once Redis is back on its port.
"""
from __future__ import annotations

import time

import httpx
import pycrdt
import pytest
from rtclients import Scenario, log_updates, replay, text_of, until

CONVERGE_S = 10  # log polling runs every 0.2 s here; this is generous


def _redis_states(cluster) -> list[tuple[str | None, str | None]]:
    out = []
    for g in cluster.gateways:
        try:
            body = g.readyz()
            out.append((body["dependencies"]["redis"]["state"], body["status"]))
        except (httpx.HTTPError, KeyError, ValueError) as e:
            out.append((None, repr(e)))
    return out


async def test_burst_with_redis_killed_midway(cluster_factory, pg_database, private_redis, js):
    c = cluster_factory(pg_database, redis=private_redis, label="out")
    await until(lambda: all(s == ("up", "ready") for s in _redis_states(c)), 15, "every gateway ready, redis up")
    problems: list[str] = []
    async with Scenario(c, js, "outage") as s:
        await s.add_js("writer")
        p_other = await s.add_py("p-other")
        await s.add_js("j-same")
        await s.add_js("j-other")
        p_same = await s.add_py("p-same")
        s.assert_split()

        await js.call("burst", id="writer", n=250)
        private_redis.kill()  # mid-burst: the first half may still be on its way
        killed_at = time.monotonic()
        await js.call("burst", id="writer", n=250)
        # writers on the other side during the outage as well
        p_other.get("text", type=pycrdt.Text).insert(0, "<other>")
        p_same.get("text", type=pycrdt.Text).insert(0, "<same>")
        total = 500 + len("<other>") + len("<same>")

        # /readyz: Redis down, the gateway degraded
        try:
            await until(lambda: all(st not in ("up", None) and status == "degraded"
                                    for st, status in _redis_states(c)), 10, "every gateway to report the outage")
        except TimeoutError:
            problems.append(f"/readyz during the outage: {_redis_states(c)} (expected redis down, status degraded)")

        # every client converges from the log while Redis is still down
        try:
            final = await s.wait_agree(CONVERGE_S, "the burst with Redis down", length=total)
            converged_s = round(time.monotonic() - killed_at, 2)
        except AssertionError as e:
            problems.append(str(e))
            final, converged_s = None, None

        # nothing is lost: the log replays to what the clients hold
        updates = log_updates(c[0], "outage")
        logged = text_of(replay(updates))
        if len(logged) != total:
            problems.append(f"the log replays to {len(logged)} characters, expected {total}")
        if final is not None and final != logged:
            problems.append("the clients agree with each other but not with the log's replay")

        # Redis comes back on its port: /readyz says so
        private_redis.restart()
        try:
            await until(lambda: all(s == ("up", "ready") for s in _redis_states(c)), 15,
                        "every gateway to report redis up again")
        except TimeoutError:
            problems.append(f"/readyz after Redis restarted: {_redis_states(c)} (expected redis up, status ready)")
        # and realtime still works afterwards, both ways
        await js.call("insert", id="j-other", index=0, text="[after]")
        p_same.get("text", type=pycrdt.Text).insert(0, "(after)")
        try:
            await s.wait_agree(CONVERGE_S, "edits after Redis came back", length=total + 14)
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        when = f"converged {converged_s}s after the kill" if converged_s is not None else "did not converge"
        pytest.fail(f"({s.placement()}; {when})\n" + "\n".join(problems), pytrace=False)
