"""Runs after the browser modules (file order): the sync Playwright API marks its event
loop running on the main thread while a browser is open, so a browser fixture wider than
a module would break every async test after tests/browser/ (pytest-asyncio, asyncio.run)."""
from __future__ import annotations

import asyncio


async def test_an_async_test_runs_after_the_browser_tests():
    assert await asyncio.sleep(0, result=1) == 1


def test_asyncio_run_works_after_the_browser_tests():
    assert asyncio.run(asyncio.sleep(0, result=2)) == 2
