"""Headless Chromium for the tests that look at pages as a person would: Debian's
``chromium`` driven by Playwright through ``executable_path`` (Playwright's own browser
download cannot work offline). Every request that leaves the allowed origins is recorded and
aborted. Where chromium is absent the caller skips with the reason;
``NOMINAL_TEST_REQUIRE_BROWSER=1`` (as .ci/run sets) makes that a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """The chromium executable, or skip (fail in CI) with the reason."""
    reason = None
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (make install)"
    if reason and os.environ.get("NOMINAL_TEST_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (NOMINAL_TEST_REQUIRE_BROWSER is set, as in CI)")
    if reason:
        pytest.skip(reason)
    assert CHROMIUM is not None
    return CHROMIUM


def loopback_only(url: str) -> bool:
    return urlsplit(url).hostname == "127.0.0.1"


@dataclass
class PageVisit:
    """What a page did: the requests that tried to leave (aborted), console errors, and what
    ``inspect`` returned."""

    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    result: Any = None


def visit(url: str, *, allowed: Callable[[str], bool], wait_for: tuple[str, str],
          inspect: Callable[[Any], Any] | None = None) -> PageVisit:
    """Open ``url``, wait until the ``(selector, text)`` element is visible, then run
    ``inspect(page)``; requests for which ``allowed`` is false are recorded and aborted."""
    from playwright.sync_api import Route, sync_playwright

    executable = require_browser()
    seen = PageVisit()

    def guard(route: Route) -> None:
        target = route.request.url
        if allowed(target) or target.startswith(("data:", "blob:")):
            route.continue_()
        else:
            seen.outside.append(target)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            context = browser.new_context(service_workers="block")
            context.route("**/*", guard)
            page = context.new_page()
            page.on("console",
                    lambda m: seen.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen.errors.append(str(e)))
            response = page.goto(url, wait_until="load")
            assert response is None or response.ok, f"{url}: {response and response.status}"
            selector, text = wait_for
            page.locator(selector, has_text=text).first.wait_for(state="visible",
                                                                 timeout=30_000)
            if inspect is not None:
                seen.result = inspect(page)
        finally:
            browser.close()
    return seen
