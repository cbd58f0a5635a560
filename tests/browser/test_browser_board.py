"""The offline-first task board (/app/board.html, clientkit-js) in Chromium: ops queue in
IndexedDB while offline and survive a reload (the page from the service worker), then
reconcile; a manual conflict is decided in one page and both show the decision; with
WebSockets blocked the board polls and still receives a change made elsewhere."""
from __future__ import annotations

import httpx
from browser_support import screenshot
from playwright.sync_api import expect
from security.sec_limits_support import token

# Replaces the page's WebSocket with one that fails as a blocked network would (error, then close 1006).
BLOCK_WEBSOCKETS = """
window.WebSocket = class BlockedWebSocket extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor (url) {
    super(); this.url = url; this.readyState = 0; window.__blockedWebSockets = (window.__blockedWebSockets || 0) + 1
    setTimeout(() => {
      this.readyState = 3
      const err = new Event('error'); if (this.onerror) this.onerror(err); this.dispatchEvent(err)
      const closed = new CloseEvent('close', { code: 1006, reason: '' }); if (this.onclose) this.onclose(closed)
      this.dispatchEvent(closed)
    }, 0)
  }
  send () { throw new Error('blocked') }
  close () {}
}
"""

QUEUED_IN_INDEXEDDB = """name => new Promise((resolve, reject) => {
  const open = indexedDB.open(name)
  open.onerror = () => reject(open.error)
  open.onsuccess = () => {
    const count = open.result.transaction('ops').objectStore('ops').count()
    count.onsuccess = () => { resolve(count.result); open.result.close() }
    count.onerror = () => reject(count.error)
  }
})"""


def _online(page) -> None:
    expect(page.locator("#status")).to_have_text("online")


def _task(page, title: str):
    return page.locator(".task", has=page.locator(".title", has_text=title))


def _add(page, title: str) -> str:
    page.fill("#new-title", title)
    page.click("#new-task button[type=submit]")
    card = _task(page, title)
    expect(card).to_have_count(1)
    return card.get_attribute("data-id")


def _record(server, task_id: str) -> dict:
    r = httpx.get(f"{server.url}/v1/records/board/{task_id}", headers={"Authorization": f"Bearer {token('carol')}"},
                  timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_offline_ops_queue_in_indexeddb_survive_a_reload_and_reconcile(pages, server, unique):
    user = f"a{unique}"
    ctx = pages.context()
    page = pages.open("/app/board.html", user=user, context=ctx)
    _online(page)
    notes, ship = f"Write the release notes {unique}", f"Ship it offline {unique}"
    first = _add(page, notes)
    expect(page.locator("#pending-count")).to_have_text("all saved")
    page.wait_for_function("navigator.serviceWorker.controller !== null")  # the page is cached for offline use

    ctx.set_offline(True)
    expect(page.locator("#status")).not_to_have_text("online")
    second = _add(page, ship)
    _task(page, notes).locator(".move-right").click()
    expect(page.locator("#pending-count")).to_have_text("2 pending")
    expect(_task(page, ship).locator(".pending-tag")).to_be_visible()
    expect(page.locator(f".column[data-column=doing] .task[data-id='{first}']")).to_have_count(1)
    db = f"syncline-board:acme:{user}"
    assert page.evaluate(QUEUED_IN_INDEXEDDB, db) == 2

    page.reload()  # still offline: the page comes from the service worker, the queue from IndexedDB
    expect(page.locator("#pending-count")).to_have_text("2 pending")
    expect(_task(page, ship).locator(".pending-tag")).to_be_visible()
    expect(page.locator(f".column[data-column=doing] .task[data-id='{first}'] .title")).to_have_text(notes)
    assert page.evaluate(QUEUED_IN_INDEXEDDB, db) == 2
    assert _record(server, second)["values"] == {}  # nothing reached the server yet

    ctx.set_offline(False)
    _online(page)
    expect(page.locator("#pending-count")).to_have_text("all saved")
    expect(page.locator(".task.pending")).to_have_count(0)
    assert page.evaluate(QUEUED_IN_INDEXEDDB, db) == 0
    assert _record(server, second)["values"]["title"] == ship
    assert _record(server, first)["values"]["column"] == "doing"
    # and another device sees both
    other = pages.open("/app/board.html", user=user)
    expect(other.locator(f".column[data-column=doing] .task[data-id='{first}'] .title")).to_have_text(notes)
    expect(_task(other, ship)).to_have_count(1)


def test_a_manual_conflict_is_decided_in_one_page_and_both_show_it(pages, server, unique):
    alice_ctx, bob_ctx = pages.context(), pages.context()
    alice = pages.open("/app/board.html", user="alice", context=alice_ctx)
    bob = pages.open("/app/board.html", user="bob", context=bob_ctx)
    _online(alice)
    _online(bob)
    expect(alice.locator("#presence")).to_contain_text("bob")  # (room presence, over the WebSocket)
    title = f"Plan {unique}"
    task = _add(alice, title)
    expect(_task(bob, title)).to_have_count(1)

    # both rename it while offline: concurrent writes of a manual field
    for page, ctx, new in ((alice, alice_ctx, "Plan A"), (bob, bob_ctx, "Plan B")):
        ctx.set_offline(True)
        expect(page.locator("#status")).not_to_have_text("online")
        card = page.locator(f".task[data-id='{task}']")
        card.locator(".rename").click()
        card.locator(".rename-input").fill(f"{new} {unique}")
        card.locator(".rename-form button").click()
        expect(card.locator(".pending-tag")).to_be_visible()
    alice_ctx.set_offline(False)
    _online(alice)
    expect(alice.locator("#pending-count")).to_have_text("all saved")
    bob_ctx.set_offline(False)
    _online(bob)

    for page in (alice, bob):  # both versions offered, in both pages
        box = page.locator(f".conflict[data-id='{task}']")
        expect(box.locator("button.choose")).to_have_count(2)
        expect(box.locator(f"button.choose[data-value='Plan A {unique}']")).to_contain_text("(alice)")
        expect(box.locator(f"button.choose[data-value='Plan B {unique}']")).to_contain_text("(bob)")
    screenshot(bob, "board")
    ops = pages.open("/app/ops.html?refresh=300", user="audrey", roles=("auditor",))  # the operations page lists it
    expect(ops.locator("#card-conflicts")).to_contain_text(f"rec/board/{task} · title")

    alice.locator(f".conflict[data-id='{task}'] button.choose[data-value='Plan B {unique}']").click()
    for page in (alice, bob):
        expect(page.locator(".conflict")).to_have_count(0)
        expect(page.locator(f".task[data-id='{task}'] .title")).to_have_text(f"Plan B {unique}")
    assert _record(server, task)["values"]["title"] == f"Plan B {unique}"
    assert _record(server, task)["conflicts"] == []
    expect(ops.locator("#card-conflicts")).not_to_contain_text(f"rec/board/{task}")


def test_with_websockets_blocked_the_board_polls_and_gets_changes_from_elsewhere(pages, unique):
    blocked_ctx = pages.context()
    blocked_ctx.add_init_script(BLOCK_WEBSOCKETS)
    blocked = pages.open("/app/board.html", user="paul", context=blocked_ctx)
    expect(blocked.locator("#transport")).to_have_text("via poll")
    _online(blocked)
    assert blocked.evaluate("window.__blockedWebSockets") >= 1

    elsewhere = pages.open("/app/board.html", user="wendy")
    _online(elsewhere)
    expect(elsewhere.locator("#transport")).to_have_text("via ws")
    _add(elsewhere, f"Made elsewhere {unique}")
    expect(_task(blocked, f"Made elsewhere {unique}")).to_have_count(1)
    # and the polling page's own edits go out too
    _add(blocked, f"Sent while polling {unique}")
    expect(blocked.locator("#pending-count")).to_have_text("all saved")
    expect(_task(elsewhere, f"Sent while polling {unique}")).to_have_count(1)
