"""The operations page (/app/ops.html) in Chromium: live figures from GET /v1/ops/stats, a
dead letter made by the test (a real consumer group whose handler fails), and its
requeue button; an auditor sees the figures only, a member is told what is needed."""
from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
from browser_support import screenshot
from playwright.sync_api import expect
from security.sec_limits_support import TENANT, token
from waiting import until

from syncline.bus import Bus, RetryPolicy
from syncline.engine.events import NewEvent
from syncline.store import open_store
from syncline.store.bus import GroupStore


async def _dead_letter(db_url: str) -> None:
    """A consumer group ``billing`` whose handler refuses ``bad`` invoices: one dead letter."""
    store = await open_store(db_url, poll_interval_s=0.05)
    try:
        async def handler(d):
            if d.event.data.get("bad"):
                raise RuntimeError("cannot bill a negative amount")

        member = await Bus(store).group("billing", handler, tenant=TENANT, partitions=1,
                                        policy=RetryPolicy(retry_delay_s=0.01)).start()
        await store.append(TENANT, "inv/1", [NewEvent("invoice.issued", {"amount": 5})])
        await store.append(TENANT, "inv/2", [NewEvent("invoice.issued", {"amount": -5, "bad": True})])
        await until(lambda: member.stats.dead_lettered == 1, 20, "the bad invoice to be dead-lettered")
        head = await store.head_position()
        gs = GroupStore(store, TENANT, "billing")

        async def at_head() -> bool:
            return await gs.low_watermark() >= head

        await until(at_head, 20, "the group to checkpoint past the dead letter")
        await member.stop()
    finally:
        await store.close()


def test_ops_page_shows_a_dead_letter_and_requeues_it(browser, serve, tmp_path):
    from browser_support import Pages

    workdir = tmp_path / "s0"  # (where serve() below keeps its SQLite file)
    workdir.mkdir()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # (Playwright's sync API holds this thread's loop)
        pool.submit(asyncio.run, _dead_letter(f"sqlite+aiosqlite:///{workdir}/events.db")).result()
    server = serve()
    assert server.workdir == workdir
    admin = token("olivia", roles=("admin",))
    auth = {"Authorization": f"Bearer {admin}"}
    [entry] = httpx.get(f"{server.url}/v1/bus/dead-letters", headers=auth, timeout=10).json()["entries"]

    pages = Pages(browser, server)
    try:
        # someone in a room and on a document, so the charts have something to show
        editor = pages.open("/app/editor.html?doc=runbook", user="dana")
        expect(editor.locator("#status")).to_have_text("online")
        board = pages.open("/app/board.html", user="bo")
        expect(board.locator("#status")).to_have_text("online")
        ops = pages.open("/app/ops.html?refresh=300", user="olivia", roles=("admin",))
        row = ops.locator(f"tr.dlq-entry[data-id='{entry['id']}']")
        expect(row).to_contain_text("invoice.issued inv/2")
        expect(row).to_contain_text("cannot bill a negative amount")
        expect(row.locator(".status")).to_have_text("dead")
        expect(ops.locator("#card-lag")).to_contain_text("billing")
        expect(ops.locator("#card-docs")).to_contain_text("runbook")
        expect(ops.locator("#card-state")).to_contain_text("up sqlite")
        expect(ops.locator("#card-connections .legend.s1")).to_have_text("yjs: 1")
        expect(ops.locator("#card-rooms")).to_contain_text("board")
        editor.locator(".cm-content").click()
        for line in ("Restart the billing worker. ", "Then requeue the invoice."):  # some events/s to chart
            editor.keyboard.type(line, delay=20)
        ops.wait_for_function("window.syncline.ops.points() >= 10")
        screenshot(ops, "ops")

        row.locator("button.requeue").click()
        expect(row.locator(".status")).to_have_text("requeued")
        expect(row.locator("button.requeue")).to_have_count(0)
        got = httpx.get(f"{server.url}/v1/bus/dead-letters/{entry['id']}", headers=auth, timeout=10).json()
        assert got["status"] == "requeued"

        # an auditor sees the figures, not the dead letters; a member is told what is needed
        auditor = pages.open("/app/ops.html", user="audrey", roles=("auditor",))
        expect(auditor.locator("#card-lag")).to_contain_text("billing")
        expect(auditor.locator("#card-dlq")).to_contain_text("dead letters need an admin token")
        member = pages.open("/app/ops.html", user="mo", roles=("member",))
        expect(member.locator("#ops-error")).to_contain_text("needs an admin or auditor token")
    finally:
        pages.close()
