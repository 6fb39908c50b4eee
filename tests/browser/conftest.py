"""Real Chromium (Debian's package, driven by Playwright) against a real ``hubbub serve --dev``.

Playwright's own browser download does not work here, so the system
Chromium is launched by path. Under CI=true a missing Chromium fails the
run; elsewhere the browser tests are skipped with the reason.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.server import HubProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 15_000


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need Chromium under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    _require_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One dev-mode hub shared by the tests that leave it as they found it.

    HEARTBEAT=1 so heartbeats (and dead-link detection) happen within a test.
    A JWT secret lets a page act as a named user (the demo's ``?token=``);
    pages without a token stay dev-anonymous. No API key: as with a plain
    ``hubbub serve --dev``, the publish API trusts loopback.
    """
    from tests.integration.tokens import SECRET
    process = HubProcess(env={"HUBBUB_HEARTBEAT": "1", "HUBBUB_JWT_SECRET": SECRET}).start(
        tmp_path_factory.mktemp("hub"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def keyed_hub(browser, tmp_path_factory):
    """A --dev hub with an API key, a JWT secret and an audience (the inbox and
    presence tests' settings): pages act as users with real JWTs. A page of
    the fast port may use the ASGI port's /presence and /notifications (CORS)."""
    from tests.integration.helpers_user import SECURED_ENV
    process = HubProcess(env=SECURED_ENV)
    process.env["HUBBUB_CORS_ORIGINS"] = f"http://127.0.0.1:{process.fast_port}"
    process.start(tmp_path_factory.mktemp("keyed-hub"))
    yield process
    process.stop()


@pytest.fixture
def page(browser, request):
    """A fresh browser context and page; a screenshot of it is kept as a test artifact."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.console_lines = console
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console))
    finally:
        context.close()
