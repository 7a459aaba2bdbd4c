"""``/docs`` and ``/redoc`` render in a real browser with only loopback reachable: headless
Chromium (Debian's ``chromium``, driven by Playwright, never Playwright's own browser download)
against a real uvicorn serving the app.

Every request the pages make is intercepted: anything not addressed to 127.0.0.1 is recorded and
aborted, as a factory network without internet would. Where chromium is absent the tests skip
with the reason; ``NOMINAL_TEST_REQUIRE_BROWSER=1`` (as .ci/run sets) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import uvicorn

from app.db.migrate import upgrade_to_head
from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, MODELS_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_unavailable() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install)"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = _browser_unavailable()
    if reason and os.environ.get("NOMINAL_TEST_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (NOMINAL_TEST_REQUIRE_BROWSER is set, as in CI)")
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("docs")
    url = f"sqlite:///{workdir / 'nominal.db'}"
    upgrade_to_head(url)
    settings = Settings(database_url=url, admin_key=ADMIN_KEY, models_dir=MODELS_DIR,
                        initial_key_file=workdir / "initial-admin-key", preload_backbones=[],
                        log_level="WARNING")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def _render(base: str, path: str, selector: str, text: str) -> tuple[list[str], list[str]]:
    """Open ``base + path``, wait until ``selector`` shows ``text``; returns (the requests that
    tried to leave 127.0.0.1, the browser's console errors)."""
    from playwright.sync_api import Route, sync_playwright

    outside: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            context = browser.new_context(service_workers="block")
            context.route("**/*", only_loopback)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = page.goto(base + path, wait_until="load")
            assert response is not None and response.status == 200
            page.locator(selector, has_text=text).first.wait_for(state="visible",
                                                                 timeout=30_000)
        finally:
            browser.close()
    return outside, errors


def test_swagger_ui_renders_offline(server: str) -> None:
    outside, errors = _render(server, "/docs", ".opblock-summary-path",
                              "/v1/variants/{name}/inspect")
    assert outside == []
    assert errors == []  # a Content-Security-Policy refusal is a console error


# ReDoc's side menu links its maker's logo from a CDN; the page's CSP blocks it before any
# request is made (so ``outside`` stays empty), and the browser reports the refusal.
_REDOC_LOGO_REFUSED = ("Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates "
                       "the following Content Security Policy directive")


def test_redoc_renders_offline(server: str) -> None:
    outside, errors = _render(server, "/redoc", "h2", "Inspect")
    assert outside == []
    assert [e for e in errors if not e.startswith(_REDOC_LOGO_REFUSED)] == []
