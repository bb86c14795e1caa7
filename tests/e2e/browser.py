"""Headless Chromium for page tests: Debian's `chromium` driven by Playwright (no browser download).

Without a Chromium these tests skip, unless REQUIRE_BROWSER_TESTS=1 (set by .ci/run, which
installs it), where a missing browser is a failure rather than a silent skip.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

log = logging.getLogger(__name__)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# This machine's network is closed: without these Chromium keeps trying to reach Google.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

WIDGET_TEXT = """(() => {
  const root = document.querySelector('#supportbot-widget')?.shadowRoot;
  if (!root) return document.body.innerText;
  return [...root.children].filter((node) => node.tagName !== 'STYLE').map((node) => node.innerText).join('\\n');
})()"""


def require_browser() -> None:
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail(f"browser tests are required here: {missing}")
        pytest.skip(missing)


@asynccontextmanager
async def chromium_page(width: int = 1280, height: int = 860) -> AsyncIterator[Any]:
    """A fresh page in a fresh headless Chromium; uncaught script errors are collected on `page.errors`."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("websocket", lambda ws: console.append(f"websocket opened: {ws.url}"))
            try:
                yield page
            except BaseException:
                # What the visitor saw and what the page logged: a failure on CI must say why.
                log.error("page at failure: %s\nconsole and sockets:\n  %s", page.url, "\n  ".join(console[-40:]))
                with suppress(Exception):
                    log.error("widget text:\n%s", await page.evaluate(WIDGET_TEXT))
                raise
        finally:
            await browser.close()
