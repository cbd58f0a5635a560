"""Helpers for the browser tests: signed-in pages, screenshots, the Chromium binary."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from security.sec_limits_support import Serve, token  # (tests/security: the `syncline serve` subprocess helper)

CHROMIUM = os.environ.get("SYNCLINE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).with_name("artifacts")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 15_000  # the longest a condition may take in these tests (they usually take well under a second)


class Pages:
    """Contexts and pages of one test, closed at its end; ``open(path, user=…)`` signs in by #token=."""

    def __init__(self, browser, server: Serve) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list = []

    def context(self):
        ctx = self.browser.new_context(viewport={"width": 1200, "height": 800})
        ctx.set_default_timeout(WAIT_MS)
        self.contexts.append(ctx)
        return ctx

    def open(self, path: str, *, user: str = "alice", roles=("member",), context=None, tok: str | None = None):
        ctx = context or self.context()
        page = ctx.new_page()
        page.on("pageerror", lambda e: print(f"[{user}] page error: {e}"))
        t = tok or token(user, roles=roles)
        page.goto(f"{self.server.url}{path}#token={t}")
        return page

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


def screenshot(page, name: str) -> Path:
    """Save a screenshot as a test artifact (and in docs/img/ when asked to refresh those)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("SYNCLINE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")
    return path
