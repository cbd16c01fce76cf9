"""The dashboard at / in a real headless browser (Playwright driving Debian's chromium) against a real
two-node swarm on 127.0.0.1: A has no model, B serves the tests' tiny models (greedy)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, sync_playwright

from p2pai.token import new_token
from test_swarm import online_peers, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OFFLINE_LIMIT = 5.0


@dataclass
class Browsing:
    page: Page
    errors: list[str] = field(default_factory=list)
    """Console errors and uncaught exceptions of the page."""
    requests: list[Request] = field(default_factory=list)


@pytest.fixture
def browsing() -> Iterator[Browsing]:
    """A fresh page whose console errors, page errors and requests are recorded. Chromium may not resolve
    any name but the loopback addresses (a request elsewhere fails instead of leaving the machine)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            seen = Browsing(browser.new_page())

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    seen.errors.append(f"console: {message.text}")

            seen.page.on("console", on_console)
            seen.page.on("pageerror", lambda error: seen.errors.append(f"page: {error}"))
            seen.page.on("request", lambda request: seen.requests.append(request))
            yield seen
        finally:
            browser.close()


def test_the_dashboard_shows_the_swarm_streams_a_chat_and_sees_a_node_die(
        browsing: Browsing, start_node, models_dir: Path) -> None:
    page = browsing.page
    token = new_token()
    a = start_node("--token", token, "--no-default-model", "--models-dir", str(models_dir / "none"), "--name",
                   "entry-a", name="a")
    b = start_node("--token", token, "--bootstrap", a.bootstrap_addr(), "--models-dir", str(models_dir),
                   "--no-default-model", "--threads", "1", "--name", "server-b", name="b")
    wait_for(lambda: len(online_peers(a)) == 1, 10.0)
    a_id, b_id = a.peer_id(), b.peer_id()

    response = page.goto(a.url + "/")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    for node in (a_id, b_id):  # both nodes, online
        page.wait_for_selector(f'tr[data-node-id="{node}"][data-online="true"]', timeout=5000)
    assert "server-b" in page.inner_text("#nodes") and "entry-a" in page.inner_text("#nodes")
    page.wait_for_selector('#model-rows tr[data-model="tiny"]', timeout=5000)
    assert "server-b" in page.inner_text('#model-rows tr[data-model="tiny"]')
    # Same machine, no keys: the join command with the token, and its copy button.
    page.wait_for_selector("#join:not([hidden])", timeout=5000)
    assert page.inner_text("#join-command").startswith(f"p2pai start --token {token}")

    # The playground streams an answer from B through A, and says who served it.
    page.wait_for_selector('#chat-model option[value="tiny"]', state="attached", timeout=5000)
    page.select_option("#chat-model", "tiny")
    page.fill("#chat-max", "8")
    page.fill("#chat-input", "hi")
    page.click("#chat-send")
    page.wait_for_selector('#chat-output[data-done="true"]', state="attached", timeout=15000)
    assert page.get_attribute("#chat-served", "data-node-id") == b_id
    assert "server-b" in page.inner_text("#chat-served")
    assert page.text_content("#chat-output") != ""
    assert "[error" not in page.text_content("#chat-output")
    # The charts drew the request (rates need two scrapes, 2 s apart).
    page.wait_for_selector("#chart-requests polyline[points]", state="attached", timeout=8000)
    assert float(page.text_content("#chart-members .value")) == 2

    b.proc.kill()
    killed = time.monotonic()
    page.wait_for_selector(f'tr[data-node-id="{b_id}"][data-online="false"]', timeout=OFFLINE_LIMIT * 1000)
    assert time.monotonic() - killed < OFFLINE_LIMIT

    assert browsing.errors == []
    origin = urlsplit(a.url)
    requested = {urlsplit(request.url)[:2] for request in browsing.requests if not request.url.startswith("data:")}
    assert requested == {(origin.scheme, origin.netloc)}, requested
    assert [r.method for r in browsing.requests if r.url.endswith("/v1/chat/completions")] == ["POST"]
