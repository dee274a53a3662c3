"""/api/docs/ in Debian's Chromium with no way out to the internet: Swagger UI must come from our own
static files (drf-spectacular-sidecar) and render the operations, served by a real daphne as `make run`
starts it. Every request to a host other than 127.0.0.1/localhost is aborted and recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.browser import LOCAL_HOSTS
from tests.webchat.conftest import DaphneServer, free_port, start_daphne

pytestmark = [pytest.mark.browser]


@pytest.fixture
def server(transactional_db: Any, tmp_path: Path) -> Iterator[DaphneServer]:
    running = start_daphne(free_port(), tmp_path)
    yield running
    running.stop()


def test_api_docs_render_every_area_offline_without_console_errors(browser: Any, server: DaphneServer) -> None:
    from playwright.sync_api import expect

    blocked: list[str] = []
    console_errors: list[str] = []
    failed: list[str] = []

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context()
    context.route("**/*", only_local)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.on("requestfailed", lambda request: failed.append(f"{request.url} {request.failure}"))

    page.goto(f"{server.url}/api/docs/")

    # The operations are rendered: area sections, and an operation's summary and path.
    expect(page.locator(".opblock-tag-section").first).to_be_visible(timeout=20000)
    for area in ("Tenants", "Channels", "Knowledge", "Conversations", "Events & webhooks", "Web chat", "Health"):
        expect(page.locator(".opblock-tag", has_text=area).first).to_be_visible()
    create = page.locator(".opblock-post", has_text="/api/tenants/{tenant_id}/channels/").first
    expect(create).to_be_visible()
    expect(create.locator(".opblock-summary-description")).to_have_text("Create a channel")
    assert page.locator(".opblock").count() >= 50

    # Opening one shows its description and its documented errors.
    create.locator(".opblock-summary").click()
    expect(create.locator(".opblock-description-wrapper").first).to_contain_text("widget key")
    expect(create.locator(".responses-table .response[data-code='409']")).to_be_visible()

    assert blocked == []
    assert failed == []
    assert console_errors == []
    context.close()
