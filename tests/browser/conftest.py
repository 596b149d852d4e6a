"""A real headless browser — Debian's ``chromium``, driven by Playwright — against the real
receiver and worker processes (``tests.integration.conftest.Stack``), the broker and the store.

Nothing is ever downloaded: Playwright is launched with the system chromium's path. Without a
chromium these tests skip with the reason, except under ``CI=true``, where they fail
(``make test`` installs it first: ``tools/services.py``)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import CI
from tests.integration.conftest import base_env, make_stack  # noqa: F401 - fixtures shared with these tests

OPERATOR_TOKEN = "operator-token-browser-5e0d1a"
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        if CI:
            pytest.fail("chromium is required under CI=true and is not installed", pytrace=False)
        pytest.skip("no chromium installed (apt-get install chromium; `make test` does it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, headless=True)
        yield launched
        await launched.close()


@pytest.fixture
async def console(browser: Any, make_stack: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:  # noqa: F811
    """``await console(**env)``: a receiver and a worker with the operator token, and a
    browser page logged in to their console as ``alice``; returns (stack, page)."""
    contexts: list[Any] = []

    async def start(**env: str) -> tuple[Any, Any]:
        stack = make_stack(OPERATOR_TOKEN=OPERATOR_TOKEN, **env)
        await stack.start_receiver()
        await stack.start_worker()
        context = await browser.new_context(base_url=stack.base)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        await login(page, OPERATOR_TOKEN, "alice")
        return stack, page

    yield start
    for context in contexts:
        await context.close()


async def login(page: Any, token: str, name: str) -> None:
    await page.goto("/ui/")
    assert "/ui/login" in page.url
    await page.fill("input[name=token]", token)
    await page.fill("input[name=name]", name)
    await page.click("main button[type=submit]")
    await page.wait_for_url("**/ui/")
