"""A tenant owner uploads a document in the admin in Debian's Chromium (headless, Playwright) against a
real daphne and a real worker, and watches the document's page reach 100 % and show its chunks without
reloading; no console error, and no request leaves 127.0.0.1."""

from __future__ import annotations

from tenants import services
from tests.browser import admin_login, pytestmark, watched_page  # noqa: F401 (Chromium marks)
from tests.webchat.conftest import _fresh_channel_layer, daphne_servers  # noqa: F401 (fixtures)

PASSWORD = "pw-owner-123456789"


def test_owner_uploads_and_sees_the_progress_reach_100_percent_without_reloading(
    browser,
    daphne_servers,  # noqa: F811
    live_worker,
    tenant,
    settings,
    tmp_path,
):
    from playwright.sync_api import expect

    services.staff_user_create(tenant=tenant, username="owner", role="owner", password=PASSWORD)
    server = daphne_servers(env={"MEDIA_ROOT": str(settings.MEDIA_ROOT)})  # the worker reads the file there
    upload = tmp_path / "handbook.md"
    upload.write_text("# Leave\n\nStaff get 25 days of paid leave per year.\n\n# Hours\n\nWe open at 9.\n")

    watched = watched_page(browser)
    page = watched.page
    admin_login(page, server.url, "owner", PASSWORD)
    page.goto(f"{server.url}/admin/knowledge/document/add/")
    page.fill("#id_title", "Handbook")
    page.set_input_files("#id_upload", str(upload))
    page.click("input[name=_save]")
    expect(page.locator("#document-progress")).to_be_visible()
    page.evaluate("window.__notReloaded = true")

    expect(page.locator("#document-progress")).to_have_attribute("data-done", "true", timeout=60000)
    expect(page.locator("#document-progress-text")).to_have_text("Indexed: 2/2 (100%)")
    assert page.evaluate("document.querySelector('#document-progress progress').value") == 100
    expect(page.locator("#chunk-preview tbody tr")).to_have_count(2)
    rows = page.evaluate(
        "[...document.querySelectorAll('#chunk-preview tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    assert page.evaluate("window.__notReloaded") is True
    assert rows == [
        ["0", "", "Leave", "Leave\n\nStaff get 25 days of paid leave per year."],
        ["1", "", "Hours", "Hours\n\nWe open at 9."],
    ]
    assert watched.errors == []
    assert watched.outside_requests() == []
