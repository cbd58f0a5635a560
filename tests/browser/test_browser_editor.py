"""The collaborative editor (/app/editor.html) in Chromium: two pages converge and see
each other's cursors; a page that goes offline keeps its edits and they reach the log."""
from __future__ import annotations

import httpx
from browser_support import screenshot
from playwright.sync_api import expect
from security.sec_limits_support import token
from waiting import wait_for


def _text(page) -> str:
    return page.evaluate("window.syncline.editor.ytext.toString()")


def _wait_text(page, text: str) -> None:
    """Wait until the page's document holds exactly ``text`` (the editor shows carets inside .cm-content)."""
    page.wait_for_function("t => window.syncline.editor.ytext.toString() === t", arg=text)
    assert page.evaluate("window.syncline.editor.view.state.doc.toString()") == text


def _type(page, where: str, text: str) -> None:
    """Type into CodeMirror like a user: click, move the caret, type."""
    page.locator(".cm-content").click()
    page.keyboard.press("Control+End" if where == "end" else "Control+Home")
    page.keyboard.type(text)


def _synced(page) -> None:
    expect(page.locator("#status")).to_have_text("online")
    page.wait_for_function("window.syncline && window.syncline.editor.provider.synced")


def test_two_pages_converge_and_show_each_others_cursor(pages, unique):
    a = pages.open(f"/app/editor.html?doc=d{unique}", user="alice")
    b = pages.open(f"/app/editor.html?doc=d{unique}", user="bob")
    _synced(a)
    _synced(b)
    _type(a, "end", "Hello from alice. ")
    expect(b.locator(".cm-content")).to_contain_text("Hello from alice.")
    _type(b, "end", "And bob.")
    expect(a.locator(".cm-content")).to_contain_text("And bob.")
    assert _text(a) == _text(b) == "Hello from alice. And bob."

    # each page draws the other's caret, named from awareness (y-codemirror.next)
    expect(a.locator(".cm-ySelectionInfo", has_text="bob")).to_have_count(1)
    expect(b.locator(".cm-ySelectionInfo", has_text="alice")).to_have_count(1)
    expect(a.locator("#peers")).to_have_text("also here: bob")
    screenshot(a, "editor")


def test_offline_page_keeps_editing_and_converges_with_its_edits_in_the_log(pages, server, unique):
    doc = f"o{unique}"
    a = pages.open(f"/app/editor.html?doc={doc}", user="alice")
    offline_ctx = pages.context()
    b = pages.open(f"/app/editor.html?doc={doc}", user="bob", context=offline_ctx)
    _synced(a)
    _synced(b)
    _type(a, "end", "shared start.")
    _wait_text(b, "shared start.")

    offline_ctx.set_offline(True)
    expect(b.locator("#status")).to_have_text("offline")
    _type(b, "end", " bob offline.")
    _type(a, "home", "alice online. ")
    # a does not get bob's edit while bob is offline
    _wait_text(a, "alice online. shared start.")
    _wait_text(b, "shared start. bob offline.")

    offline_ctx.set_offline(False)
    _synced(b)
    _wait_text(a, "alice online. shared start. bob offline.")
    _wait_text(b, "alice online. shared start. bob offline.")

    # bob's offline edit is in the log, under his name, and the server's document has it
    auth = {"Authorization": f"Bearer {token('carol')}"}
    events = httpx.get(f"{server.url}/v1/streams/doc/{doc}?limit=1000", headers=auth, timeout=10).json()["events"]
    assert any(e["actor"]["user"] == "bob" for e in events), [e["actor"] for e in events]
    state = httpx.get(f"{server.url}/v1/docs/{doc}?text=content", headers=auth, timeout=10).json()
    assert state["text"]["content"] == "alice online. shared start. bob offline."


def test_history_slider_loads_the_document_at_a_position(pages, server, unique):
    a = pages.open(f"/app/editor.html?doc=h{unique}", user="alice")
    _synced(a)
    for word in ("one ", "two ", "three"):
        _type(a, "end", word)
        a.wait_for_function(f"window.syncline.editor.ytext.toString().endsWith({word!r})")
    # Every keystroke may be its own update: wait until the log holds the whole text (so no
    # stop is added after the count below is taken), then load the stops.
    auth = {"Authorization": f"Bearer {token('carol')}"}
    wait_for(lambda: httpx.get(f"{server.url}/v1/docs/h{unique}?text=content", headers=auth, timeout=10)
             .json()["text"]["content"] == "one two three", 15, "the log to hold the whole text")
    a.wait_for_function("""async () => {
        await window.syncline.editor.loadPositions();
        return window.syncline.editor.stops() >= 3
    }""", polling=200)
    expect(a.locator("#history-label")).to_have_text("live")
    slider = a.locator("#history")
    stops = a.evaluate("window.syncline.editor.stops()")
    assert int(slider.get_attribute("max")) == stops
    slider.fill("1")  # the first update: a prefix of the text, shown read-only
    expect(a.locator("#history-text")).to_be_visible()
    first = a.locator("#history-text").inner_text()
    assert first and "one two three".startswith(first), first
    slider.fill(str(stops))
    expect(a.locator("#history-label")).to_have_text("live")
    expect(a.locator("#history-text")).to_be_hidden()
