"""The browser tests' fixtures: one `kiln serve` with an API key (test endpoints included) and one
headless Chromium, the OS package driven by Playwright, shared by every test of tests/ui.

Chromium is `/usr/bin/chromium` (`.ci/run` installs it when it is missing); without it the tests
fail and say so, never skip. Pages get a fresh browser context each, with the key already in
localStorage (except where the test types it), every request to another origin aborted and
recorded, and uncaught page errors collected; screenshots go to tests/ui/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.servers import KilnProcess
from tests.fixtures.apps import TEST_PIPELINES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
KEY = "ui-test-key"


@dataclass
class Ui:
    server: KilnProcess
    browser: object
    key: str = KEY

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Tab:
    """A page in its own context, with what it tried to load from elsewhere and the errors it threw."""

    page: object
    context: object
    base: str
    offsite: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def goto(self, path: str):
        self.page.goto(self.base + path)
        return self.page

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def launch_browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive the OS chromium package "
            "(`apt-get install -y chromium`; .ci/run installs it)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install -e .[test]` (make test does)", pytrace=False)
    driver = sync_playwright().start()
    return driver, driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture(scope="package")
def kiln_spawned(tmp_path_factory) -> Iterator[KilnProcess]:
    """`kiln serve` with an API key and the test endpoints, started but not yet waited for."""
    server = KilnProcess(tmp_path_factory.mktemp("ui") / "data", "--api-key", KEY, pipelines=TEST_PIPELINES)
    server.spawn()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def browser(kiln_spawned) -> Iterator[object]:
    """Headless Chromium, launched while the server boots."""
    driver, launched = launch_browser()
    yield launched
    launched.close()
    driver.stop()


@pytest.fixture(scope="package")
def ui_server(kiln_spawned) -> KilnProcess:
    kiln_spawned.wait_healthy(120)
    return kiln_spawned


@pytest.fixture(scope="package")
def ui(browser, ui_server) -> Ui:
    return Ui(ui_server, browser)


@pytest.fixture
def tab(ui) -> Iterator[callable]:
    """Factory: `tab(with_key=True)` -> a Tab; each is checked for offsite requests and page errors."""
    opened: list[Tab] = []

    def open_tab(*, with_key: bool = True) -> Tab:
        context = ui.browser.new_context(viewport={"width": 1360, "height": 900})
        if with_key:
            context.add_init_script(f"localStorage.setItem('kiln.apiKey', {ui.key!r})")
        page = context.new_page()
        page.set_default_timeout(15_000)
        opened_tab = Tab(page, context, ui.url)

        def route(route):
            url = route.request.url
            if url.startswith((ui.url, "data:", "blob:")):
                route.continue_()
            else:
                opened_tab.offsite.append(url)
                route.abort()

        context.route("**/*", route)
        page.on("pageerror", lambda error: opened_tab.errors.append(str(error)))
        opened.append(opened_tab)
        return opened_tab

    yield open_tab
    for opened_tab in opened:
        opened_tab.context.close()
    for opened_tab in opened:
        assert opened_tab.offsite == [], f"a page asked for something outside Kiln: {opened_tab.offsite}"
        assert opened_tab.errors == [], f"uncaught errors in the page: {opened_tab.errors}"
