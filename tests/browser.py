"""A real browser for the page tests: the system's Chromium, headless, driven by Playwright.

Playwright's own browser download cannot be used (it fetches a build from its CDN), so the
Chromium of the machine is launched: Debian's ``chromium`` package (.ci/run installs it on
CI). Where it is missing the browser tests are skipped, counted at the end of the run, and
fail when ``CI=true`` (support.require_binary). Every page a test opens records its console
errors and the requests it makes, so a test can assert that nothing failed and nothing left
the gateway's origin.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# PUSHAPP_SCREENSHOTS=docs bin/test -m browser writes the docs' screenshots there.
SCREENSHOTS = os.environ.get("PUSHAPP_SCREENSHOTS", "")


class Page:
    """One browser page in a context of its own (its own cookies: another browser, as far
    as the gateway can tell), with what it logged and fetched."""

    def __init__(self, browser: Any, origin: str) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport={"width": 1100, "height": 760})
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.tab.on("console", self._console)
        self.tab.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.tab.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def open(self, path: str) -> Any:
        self.tab.goto(self.origin + path)
        return self.tab

    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the gateway (data: URLs and the like aside)."""
        own = urlsplit(self.origin).netloc
        return [url for url in self.requests
                if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(url).netloc != own]

    def screenshot(self, name: str) -> None:
        """Save the page for the docs when PUSHAPP_SCREENSHOTS names a folder."""
        if SCREENSHOTS:
            self.tab.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)

    def close(self) -> None:
        self.context.close()
