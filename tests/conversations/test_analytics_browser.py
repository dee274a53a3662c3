"""The analytics page in Debian's Chromium (headless, Playwright) against a real daphne: a tenant owner
logs in, opens the page from the admin index, picks the seeded days, and the charts (Chart.js's own
data, read from the page) and tables show exactly the seeded figures; no console error, and no request
leaves 127.0.0.1 (Chart.js comes from our static files)."""

from __future__ import annotations

from tenants import services
from tests.browser import admin_login, pytestmark, watched_page  # noqa: F401 (Chromium marks)
from tests.conversations.test_analytics import DAY0, DAY1, DAY2, seed_acme, seed_globex
from tests.webchat.conftest import _fresh_channel_layer, daphne_servers  # noqa: F401 (fixtures)

PASSWORD = "pw-owner-123456789"


def chart(page, canvas_id: str) -> dict:
    return page.evaluate(
        """id => { const c = Chart.getChart(id);
                   return { labels: c.data.labels, datasets: c.data.datasets.map(d => ({label: d.label, data: d.data})) }; }""",
        canvas_id,
    )


def table(page, table_id: str) -> list[list[str]]:
    return page.evaluate(
        "id => [...document.querySelectorAll('#' + id + ' tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))",
        table_id,
    )


def test_owner_sees_the_seeded_figures_in_charts_and_tables(browser, daphne_servers, tenant, other_tenant):  # noqa: F811
    from playwright.sync_api import expect

    seeded = seed_acme(tenant)
    seed_globex(other_tenant)
    services.staff_user_create(tenant=tenant, username="owner", role="owner", password=PASSWORD)
    server = daphne_servers()

    watched = watched_page(browser)
    page = watched.page
    admin_login(page, server.url, "owner", PASSWORD)
    page.get_by_role("link", name="Analytics").click()
    expect(page.locator("h1")).to_have_text("Analytics")
    page.fill("#id_start", DAY0.isoformat())
    page.fill("#id_end", DAY2.isoformat())
    page.click("#analytics-range input[type=submit]")
    page.wait_for_load_state("load")
    expect(page.locator("#total-messages")).to_have_text("14")

    labels = [DAY0.isoformat(), DAY1.isoformat(), DAY2.isoformat()]
    assert chart(page, "chart-messages") == {
        "labels": labels,
        "datasets": [
            {"label": "Acme WhatsApp (whatsapp)", "data": [0, 4, 2]},
            {"label": "Acme site (webchat)", "data": [0, 5, 3]},
        ],
    }
    assert chart(page, "chart-conversations") == {
        "labels": labels,
        "datasets": [
            {"label": "New", "data": [0, 2, 2]},
            {"label": "Resolved", "data": [0, 1, 1]},
            {"label": "Handoffs", "data": [0, 1, 1]},
        ],
    }
    assert chart(page, "chart-times")["datasets"] == [
        {"label": "p50 (s)", "data": [6, 60, 1200]},
        {"label": "p95 (s)", "data": [27, 114, 1740]},
    ]
    assert chart(page, "chart-documents") == {
        "labels": ["Store guide", "Holidays"],
        "datasets": [{"label": "Replies citing it", "data": [2, 1]}],
    }
    assert chart(page, "chart-usage")["datasets"] == [
        {"label": "Prompt tokens", "data": [0, 350, 80]},
        {"label": "Completion tokens", "data": [0, 60, 15]},
        {"label": "Cost (USD)", "data": [0, 0.0035, 0.0008]},
    ]
    assert table(page, "table-conversations") == [[DAY1.isoformat(), "2", "1", "1"], [DAY2.isoformat(), "2", "1", "1"]]
    assert table(page, "table-times") == [
        ["Bot first response", "4", "6.0", "27.0"],
        ["Human first response", "2", "60.0", "114.0"],
        ["Resolution", "2", "1200.0", "1740.0"],
    ]
    assert [row[2:4] for row in table(page, "table-unanswered")] == [
        ["What is the warranty on bikes?", "answer cites no passage"],
        ["Do you ship to Mars?", "retrieval found nothing"],
    ]
    assert page.locator("#handoff-rate").inner_text() == "50.0 %"
    assert "Globex" not in page.content()
    assert page.locator(".messagelist").count() == 0  # no flash message banner
    assert page.get_by_role("link", name="CSV").count() == 8

    # An unanswered question links to its conversation.
    page.locator("#table-unanswered a").first.click()
    assert str(seeded["conversations"][2].pk) in page.url

    assert watched.errors == []
    assert watched.outside_requests() == []
    assert any(url.endswith("/static/vendor/chartjs/chart.umd.min.js") for url in watched.requests)
