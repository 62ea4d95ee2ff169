"""A real headless Chromium for the UI tests: Debian's ``chromium`` package driven by
Playwright for Python through ``executable_path`` (Playwright's own browser downloads are
never used). ``.ci/run`` installs the package when ``/usr/bin/chromium`` is missing.

:class:`Tab` wraps one page: it records console errors, uncaught exceptions and failed
requests, opens UI routes and waits until the page says it has loaded (``data-ready``), and
saves screenshots under one directory per test session.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page, Request

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The screen sizes the UI must be usable at (issue 5): a laptop and a large monitor.
VIEWPORTS = {"1366x768": (1366, 768), "1920x1080": (1920, 1080)}
# Loads wait this long at most: the machine running the suite may be busy.
LOAD_TIMEOUT_MS = 90_000


def require_chromium() -> str:
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's browser with "
            "`apt-get update && apt-get install -y chromium` (.ci/run does this)"
        )
    return str(CHROMIUM)


@dataclass
class Tab:
    """One browser page on a tracehouse UI at ``base`` (``http://127.0.0.1:PORT/``)."""

    page: Page
    base: str
    screenshots: Path
    problems: list[str] = field(default_factory=list)
    in_flight: set[Request] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.page.on("request", lambda request: self.in_flight.add(request))
        self.page.on("requestfinished", lambda request: self.in_flight.discard(request))
        self.page.on("requestfailed", lambda request: self.in_flight.discard(request))
        self.page.set_default_timeout(LOAD_TIMEOUT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("requestfailed", self._request_failed)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def _request_failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.url} ({request.failure})")

    def open(self, route: str) -> Page:
        """Go to ``#/<route>`` and wait until the page has loaded its data."""
        self.page.goto(f"{self.base}#/{route}")
        return self.wait_ready()

    def wait_ready(self) -> Page:
        self.page.wait_for_selector("main > .page[data-ready]", state="attached")
        return self.page

    def wait_for(self, condition: str, timeout_ms: float = LOAD_TIMEOUT_MS) -> None:
        """Wait until the JavaScript expression ``condition`` is true in the page.

        Polled from here with ``evaluate`` rather than ``page.wait_for_function``, whose
        in-page polling evaluates a string with ``eval``, which the UI's Content-Security-Policy
        (``script-src 'self'``) forbids, as it should.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.page.evaluate(condition):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout_ms / 1000:.0f} s: {condition}")
            self.page.wait_for_timeout(50)

    def wait_quiet(self, quiet_ms: int = 300) -> None:
        """Wait until no request of the page has been in flight for ``quiet_ms``."""
        deadline = time.monotonic() + LOAD_TIMEOUT_MS / 1000
        calm_since = None
        while True:
            self.page.wait_for_timeout(50)  # lets the driver deliver request events
            now = time.monotonic()
            if self.in_flight:
                calm_since = None
            elif calm_since is None:
                calm_since = now
            elif now - calm_since >= quiet_ms / 1000:
                return
            if now > deadline:
                raise TimeoutError(f"requests still in flight: {[r.url for r in self.in_flight]}")

    def route(self) -> str:
        """The current ``#/…`` route."""
        return str(self.page.evaluate("location.hash"))

    def shot(self, name: str) -> Path:
        """A screenshot of what the screen shows now."""
        size = self.page.viewport_size or {"width": 0, "height": 0}
        path = self.screenshots / f"{_slug(name)}-{size['width']}x{size['height']}.png"
        self.page.screenshot(path=str(path))
        return path

    def take_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]
