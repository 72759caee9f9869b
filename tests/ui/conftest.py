"""Browser tests: Debian's Chromium driven by Playwright against a real ``jupyter lab``.

The suite installs Chromium itself when it is missing (CI starts from a clean machine).
Every page collects browser console errors and uncaught exceptions and fails its test on
any, except network failures inside an announced window (a server restart). Screenshots
go to ``test-artifacts/``; those the README shows also to ``docs/`` when they are missing
there or ``COILED_LAB_DOCS_SCREENSHOTS=1`` (so a test run leaves the committed ones alone).
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from .lab import JupyterLab, ensure_chromium, installed_labextension

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DOCS = REPO / "docs"

# What a browser reports when a request fails at the network level (JupyterLab's own
# pollers leave some such rejections unhandled): expected while the server is down, an
# error at any other time.
NETWORK_FAILURE = re.compile(
    r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|WebSocket connection to|^TypeError: Failed to fetch"
)
# The API answers bad input with 400 naming the field, by design; the form shows it. So
# it does with a request beyond an admin's limits, as a 403 from the clusters API.
VALIDATION_ANSWER = re.compile(r"the server responded with a status of 400")
LIMIT_ANSWER = re.compile(r"the server responded with a status of 403")


class BrowserConsole:
    """Errors the page reported: console errors, uncaught exceptions, 5xx answers."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self._tolerating = False
        page.on("console", self._console)
        page.on("pageerror", self._uncaught)
        page.on("response", self._response)

    def _console(self, message) -> None:
        if message.type != "error":
            return
        text, url = message.text, message.location.get("url", "")
        if VALIDATION_ANSWER.search(text) or (self._tolerating and NETWORK_FAILURE.search(text)):
            return
        if LIMIT_ANSWER.search(text) and "/coiled-lab/api/clusters" in url:
            return
        self.errors.append(f"console: {text} ({url})")

    def _uncaught(self, exc) -> None:
        text = exc.stack or str(exc)
        if not (self._tolerating and NETWORK_FAILURE.search(text)):
            self.errors.append(f"uncaught: {text}")

    def _response(self, response) -> None:
        if response.status >= 500:
            self.errors.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    @contextmanager
    def server_down(self) -> Iterator[None]:
        """Network failures are expected inside this block."""
        self._tolerating = True
        try:
            yield
        finally:
            self._tolerating = False


@pytest.fixture(scope="session")
def browser():
    chromium = ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    if installed_labextension() is None:
        pytest.fail("the coiled-lab lab extension is not installed; build it with `pip install -e .`")
    server = JupyterLab(
        tmp_path_factory.mktemp("lab"),
        settings={"coiled-lab:logs": {"pageSize": 20, "followInterval": 1}},
    )
    server.start()
    yield server
    server.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def console(page) -> Iterator[BrowserConsole]:
    """Fails the test on any error the page reported."""
    collected = BrowserConsole(page)
    yield collected
    assert not collected.errors, "the browser reported errors:\n" + "\n".join(collected.errors)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def docs_screenshot(locator, name: str) -> None:
    """A screenshot for the README: into test-artifacts/, and into docs/ when asked for."""
    ARTIFACTS.mkdir(exist_ok=True)
    locator.screenshot(path=ARTIFACTS / name)
    if os.environ.get("COILED_LAB_DOCS_SCREENSHOTS") == "1" or not (DOCS / name).exists():
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / name, DOCS / name)
