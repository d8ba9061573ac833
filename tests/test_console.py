"""The console in a real headless Chromium: sign in, see the pipeline, replay a dead letter.

Debian's `chromium` driven by Playwright's Python API (`playwright install` cannot download
here). Outside CI a missing browser or Playwright skips these tests; in CI it fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shutil
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apikit import STORE, SUBSCRIPTION, Running, bridge_with_api
from helpers import eventually, start_receiver

from bridge import console

IN_CI = bool(os.environ.get("CI"))
ARTIFACTS = Path(__file__).parent / "artifacts"
# Without these Chromium reaches for the network (updates, sync, QUIC probes).
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
WAIT_MS = 15_000


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI is set and {reason}")
    pytest.skip(reason)


@pytest.fixture
def expect() -> Any:
    """Playwright's `expect`, once Playwright and Chromium are known to be here."""
    try:
        from playwright.async_api import expect
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if _chromium() is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    return expect


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.asynccontextmanager
async def chromium_page(running: Running) -> AsyncIterator[tuple[Any, list[str], list[str]]]:
    """A page of a fresh headless Chromium, with every request URL and every problem it saw."""
    from playwright.async_api import async_playwright

    executable = _chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            requests: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            yield page, requests, problems
        finally:
            await browser.close()


def assert_stayed_home(running: Running, requests: list[str], problems: list[str]) -> None:
    strangers = [url for url in requests if not url.startswith(running.base + "/")]
    assert strangers == [], "requests left the bridge's own address"
    assert problems == []


async def test_console_signs_in_shows_the_pipeline_and_replays(
    expect, aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url, failing=True) as running:
        sim = running.sim
        job_id = sim.create_job(job_type="product-import")
        await eventually(lambda: _dead_letters(running, 1), what="the first dead letter")
        sim.set_status(job_id, "started")
        await eventually(lambda: _dead_letters(running, 2), what="the second dead letter")
        sim.set_status(job_id, "success")
        await eventually(lambda: _dead_letters(running, 3), what="the third dead letter")

        async with chromium_page(running) as (page, requests, problems):
            await page.goto(running.base + "/")
            await expect(page.locator("#login")).to_be_visible()
            await page.fill("#token", "let-me-in")
            await page.click("#login-form button[type=submit]")

            await expect(page.locator("#pollers")).to_contain_text(STORE, timeout=WAIT_MS)
            await expect(page.locator("#subscriptions")).to_contain_text(SUBSCRIPTION)
            await expect(page.locator("#events")).to_contain_text(job_id[:8])
            await expect(page.locator("#dlq tbody tr")).to_have_count(3)
            await expect(page.locator("#readiness")).to_have_text("ready")
            await expect(page.locator("#chart-activity")).to_contain_text("product-import")
            await expect(page.locator("#chart-durations svg circle")).to_have_count(2)

            await page.locator("#events tbody tr").first.click()
            detail = page.locator("#detail")
            await expect(detail.locator("pre")).to_contain_text(f'"subject": "{job_id}"')
            await expect(detail.locator("table")).to_contain_text("500")

            running.hook.failing = False
            await page.locator("#dlq tbody tr").first.get_by_role("button", name="Replay").click()
            await eventually(lambda: running.hook.received, what="the replayed delivery")
            [replayed] = running.hook.received
            assert replayed["subject"] == job_id
            await expect(page.locator("#dlq tbody tr")).to_have_count(2, timeout=WAIT_MS)
            delivered = page.locator("#events .chip.delivered")
            await expect(delivered).to_have_count(1, timeout=WAIT_MS)

            await page.reload()  # the token is kept for the tab: no second sign-in
            await expect(page.locator("#pollers")).to_contain_text(STORE, timeout=WAIT_MS)
            await expect(page.locator("#login")).to_be_hidden()

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            assert_stayed_home(running, requests, problems)


async def test_console_without_a_token_opens_directly(
    expect, aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url, token=None) as running:
        async with chromium_page(running) as (page, requests, problems):
            await page.goto(running.base + "/")
            await expect(page.locator("#pollers")).to_contain_text(STORE, timeout=WAIT_MS)
            await expect(page.locator("#login")).to_be_hidden()
            await expect(page.locator("#logout")).to_be_hidden()
            await expect(page.locator("#dlq")).to_contain_text("No dead letter")
            assert_stayed_home(running, requests, problems)


async def _dead_letters(running: Running, count: int) -> bool:
    _, body = await running.get("/dlq")
    return len(body["dead_letters"]) == count


def test_every_console_file_ships_in_the_wheel_and_is_served():
    package = Path(console.__file__).parent
    files = {p.name for p in package.iterdir() if p.is_file() and p.suffix != ".py"}
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["bridge.console"]
    assert all(any(fnmatch.fnmatch(name, p) for p in patterns) for name in files), files
    page = (package / "index.html").read_text()
    linked = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page))
    assert linked <= set(console.ASSETS) and files == set(console.ASSETS) | {"index.html"}


async def test_console_lists_subscriptions_with_their_origin_and_adds_a_webhook(
    expect, aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        receiver = await start_receiver(aiohttp_server)
        async with chromium_page(running) as (page, requests, problems):
            await page.goto(running.base + "/")
            await page.fill("#token", "let-me-in")
            await page.click("#login-form button[type=submit]")
            subscriptions = page.locator("#subscriptions")
            await expect(subscriptions).to_contain_text("webhook · config", timeout=WAIT_MS)

            await page.click("#add-webhook summary")
            form = page.locator("#webhook-form")
            await form.locator("[name=name]").fill("from-console")
            await form.locator("[name=url]").fill("ftp://example.com/hook")
            await form.locator("button[type=submit]").click()
            await expect(page.locator("#webhook-result")).to_contain_text("url: must be a URL")

            await form.locator("[name=url]").fill(receiver.url)
            await form.locator("[name=statuses]").fill("pending, success")
            await form.locator("[name=private]").check()
            await form.locator("button[type=submit]").click()
            secret = page.locator("#webhook-secret")
            await expect(secret).to_contain_text("whsec_")
            receiver.secret = await secret.text_content() or ""
            row = subscriptions.locator("tr", has_text="from-console")
            await expect(row).to_contain_text("webhook · api", timeout=WAIT_MS)
            ARTIFACTS.mkdir(exist_ok=True)
            await (
                page.locator("#subscriptions")
                .locator("..")
                .screenshot(path=str(ARTIFACTS / "console-subscriptions.png"))
            )

            job_id = running.sim.create_job()  # signed with the secret the page showed
            await eventually(lambda: (job_id, "pending") in receiver.received)
            await row.get_by_role("button", name="Test").click()
            await expect(page.locator("#toast")).to_contain_text("delivered (HTTP 204)")

            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await row.get_by_role("button", name="Delete").click()
            await expect(row).to_have_count(0, timeout=WAIT_MS)
            # Chromium logs the refused entry's 422 as a failed load: that one was the point.
            problems[:] = [p for p in problems if "status of 422" not in p]
            assert_stayed_home(running, requests, problems)
