"""Browser tests: the pages under /app/ in real Chromium (Debian's ``chromium``, driven by
Playwright), against a real ``syncline serve`` on a SQLite file over a real socket.

One browser per test module (starting Chromium is the slow part); every test makes
its own contexts (separate profiles: storage, IndexedDB, offline mode). The server
is shared by the tests that do not need their own (``server``); documents and records
are named per test so they do not meet.

Screenshots go to tests/browser/artifacts/ (gitignored); with
``SYNCLINE_UPDATE_SCREENSHOTS=1`` they are also copied to docs/img/ for the README.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from browser_support import CHROMIUM, WAIT_MS, Pages
from security.sec_limits_support import Serve


def _chromium_or_skip() -> str:
    if not Path(CHROMIUM).exists():
        msg = f"Chromium is not installed at {CHROMIUM} (scripts/setup.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module. Not for the session: the sync Playwright API leaves
    its event loop marked running on this thread while it is open, and the async tests
    that follow in the run (pytest-asyncio, asyncio.run) would find it there."""
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One ``syncline serve`` for the session, on SQLite, with a real (non-development) secret."""
    s = Serve(tmp_path_factory.mktemp("browser-serve"), batch_window_ms=20).start()
    yield s
    s.stop()


@pytest.fixture
def serve(tmp_path):
    """``serve(**env)``: a server of this test's own (stopped at the end)."""
    started: list[Serve] = []

    def start(**env) -> Serve:
        s = Serve(tmp_path / f"s{len(started)}", **env).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def unique() -> str:
    """A name no other test uses (documents, records)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def pages(browser, server):
    p = Pages(browser, server)
    yield p
    p.close()
