"""The status page in a real headless Chromium (Debian's, driven by Playwright): it asks
for the token and refuses a wrong one, shows a model going stopped -> starting -> ready
live after a request, stops it with its button, and keeps the token in the tab's session
storage, never in a URL. Without a token the page shows the models before any fetch.

Its screenshot goes to a temporary folder, so that the tests leave the work tree as they
found it; `bash scripts/status-page-picture.sh` sets MS_STATUS_PAGE_PICTURE to
docs/status-page.png to refresh the README's picture."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import chat, container_running, wait_for

PICTURE_ENV = "MS_STATUS_PAGE_PICTURE"  # where the screenshot goes, when set
TOKEN = "page-token-5f1c"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", TOKEN)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Debian's chromium: scripts/setup.sh installs it")
        pytest.skip("no chromium (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def request(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        await r.read()
        return r.status


async def sign_in(page: Page, token: str) -> None:
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Open").click()


async def test_the_status_page_follows_a_model_live_and_stops_it(
        supervisor_factory, project, http, browser, tmp_path) -> None:
    sup = await supervisor_factory({"chat-slow": {}, "crashy": {}, "sleeper": {}, "ctx": {}})
    page = await browser.new_page(viewport={"width": 1500, "height": 860})
    errors: list[str] = []  # script errors, and what the page's CSP blocked
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401 (Unau"
            not in m.text else None)  # the browser logs each refused token: expected here
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    await page.goto(sup.admin + "/")

    await sign_in(page, "not-the-token")
    await expect(page.get_by_role("alert")).to_have_text("The token was refused.")
    await expect(page.locator("#app")).to_be_hidden()

    await sign_in(page, TOKEN)
    row = page.locator('tr[data-model="chat-slow"]')
    state = row.locator('[data-field="state"]')
    await expect(state).to_have_text("stopped")
    await expect(page.locator("#conn")).to_have_text("live")
    await expect(page.locator("#gpus")).to_have_text("no GPU data")

    # A request cold-starts it (the stand-in takes 3 s to load): the page follows.
    answer = asyncio.create_task(request(http, sup.url, chat("chat-slow")))
    await expect(state).to_have_text("starting", timeout=10_000)
    await expect(state).to_have_text("ready", timeout=20_000)
    assert await answer == 200
    events = page.locator('#events li[data-model="chat-slow"]')
    await expect(events).to_have_count(2)
    await expect(events.nth(0)).to_contain_text("starting \u2192 ready")
    await expect(events.nth(1)).to_contain_text("stopped \u2192 starting")
    await expect(row.locator('[data-field="cold_start"]')).to_contain_text(" s")

    # A model that crashes while loading shows its error.
    assert await request(http, sup.url, chat("crashy")) == 503
    crashy = page.locator('tr[data-model="crashy"]')
    await expect(crashy.locator('[data-field="state"]')).to_have_text("failed")
    await expect(crashy.locator('[data-field="error"]')).not_to_be_empty()
    await page.screenshot(path=os.environ.get(PICTURE_ENV) or tmp_path / "status-page.png",
                          full_page=True)

    await row.get_by_role("button", name="Stop").click()
    await expect(page.locator("#notice")).to_contain_text("chat-slow: stop")
    await expect(state).to_have_text("stopped", timeout=15_000)
    await wait_for(lambda: not container_running(project, "chat-slow"), 15, "the container gone")
    assert sup.handle("chat-slow").state.value == "stopped"

    # What idling gave back and what users paid, on the model's line (GET /admin/savings).
    savings = row.locator('[data-field="savings"]')
    await expect(savings).to_contain_text("on 1 cold start", timeout=15_000)
    async with http.get(sup.admin + "/admin/savings",
                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        account = (await r.json())["models"]["chat-slow"]["since_start"]
    assert (account["cold_starts"], account["held_requests"]["start"]) == (1, 1)
    assert account["waited_seconds"] > 0
    # (given back grows while it stays stopped: the line is read every 5 s)
    await expect(savings).to_have_text(re.compile(
        r"given back 0\.\d{4} GPU-h \u00b7 users waited "
        + re.escape(f"{account['waited_seconds']:.1f} s on 1 cold start")), timeout=15_000)

    # Pin, from the page, reaches the supervisor.
    await row.get_by_role("button", name="Pin").click()
    await expect(row.get_by_role("button", name="Unpin")).to_be_visible()
    assert sup.handle("chat-slow").pinned

    # The token lives in this tab's session storage only: a reload stays signed in.
    assert await page.evaluate("sessionStorage.getItem('model-supervisor.admin-token')") == TOKEN
    assert await page.evaluate("localStorage.length") == 0
    await page.reload()
    await expect(state).to_have_text("stopped")
    assert not any(TOKEN in url for url in urls)
    assert errors == []


async def test_without_a_token_the_page_shows_the_models_before_any_fetch(
        supervisor_factory, http, browser, monkeypatch) -> None:
    """The page arrives with its first state: a plain screenshot right after it loaded
    shows the table, even when every call to the admin API fails."""
    monkeypatch.delenv("SUPERVISOR_ADMIN_TOKEN")
    sup = await supervisor_factory({"chat-slow": {}, "crashy": {}})
    assert await request(http, sup.url, chat("chat-slow")) == 200  # a cold start: 2 events
    page = await browser.new_page(viewport={"width": 1500, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    fetched: list[str] = []

    async def refuse(route: Any) -> None:
        fetched.append(route.request.url)
        await route.abort()

    await page.route("**/admin/**", refuse)
    await page.goto(sup.admin + "/")
    rows = page.locator("#models tr")
    assert await rows.count() == 2  # now, without waiting
    assert await rows.locator('[data-field="state"]').all_inner_texts() == ["ready", "stopped"]
    events = await page.locator("#events li").all_inner_texts()
    assert len(events) == 2 and "starting \u2192 ready" in events[0]
    assert await page.locator("#gpus").inner_text() == "no GPU data"
    assert await page.locator("#login").is_hidden()
    await wait_for(lambda: fetched, 5, "the page's calls (refused: what it shows came "
                   "with the page)")
    assert errors == []


async def test_each_start_is_a_bar_of_its_phases(supervisor_factory, http, browser) -> None:
    """A stand-in that prints a vLLM start's log lines (standin-vllm-start.txt): the page
    draws the start as one bar, a segment per phase in the order they ran."""
    sup = await supervisor_factory({"vllm-like": {}, "chat-slow": {}})
    page = await browser.new_page(viewport={"width": 1500, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(sup.admin + "/")
    await sign_in(page, TOKEN)
    await expect(page.locator("#starts")).to_have_text("no start seen yet")
    assert await request(http, sup.url, chat("vllm-like")) == 200
    start = page.locator('#starts .start[data-model="vllm-like"]')
    await expect(start).to_have_count(1, timeout=10_000)
    await expect(start).to_contain_text("ok")
    segments = start.locator(".bar span")
    phases = [await s.get_attribute("data-phase") for s in await segments.all()]
    assert phases == ["container", "weights", "compile", "kv_cache", "api", "healthy"]
    assert "compile:" in (await segments.nth(2).get_attribute("title") or "")
    await expect(page.locator("#phases")).to_contain_text("weights")
    assert await page.locator('#starts .start[data-model="chat-slow"]').count() == 0
    assert errors == []
