"""Conversation intelligence in the agent inbox (issue 17): each row's sentiment and tags, the contact
panel's analysis, the list filtered by sentiment and by tag (server side, within the agent's tenant,
never another tenant's rows with the same tag), a new analysis pushed live to the tenant's agents only,
and in Chromium the row's marker and tags and the filter narrowing the list."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.inbox import services
from conversations.models import Conversation
from conversations.tasks import analyse_conversations
from tests.browser import admin_login, watched_page
from tests.inbox.conftest import client_for, make_conversation
from tests.inbox.test_inbox_http import get
from tests.inbox.test_inbox_socket import communicator, end_thread_connections, ready, session_cookie  # noqa: F401

CATEGORIES = [
    {"name": "Shipping", "description": "Delivery times, shipping costs, tracking a parcel, delivery countries"},
    {"name": "Returns", "description": "Returning an item, refunds, exchanges, return labels"},
    {"name": "Billing", "description": "Invoices, payments, charges on a card, payment methods, receipts"},
]
ANALYSED = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)


def with_categories(tenant) -> None:
    tenant.settings = {**tenant.settings, "categories": CATEGORIES}
    tenant.save(update_fields=["settings"])


def analysed(conversation: Conversation, sentiment: str, tags: list[str]) -> Conversation:
    """A conversation as conversations.intelligence leaves it (the rows the list reads)."""
    Conversation.objects.filter(pk=conversation.pk).update(sentiment=sentiment, tags=tags, analysed_at=ANALYSED)
    return conversation


def in_a_thread(function):
    """``function()`` in a thread of its own, as a worker would run it (Playwright's loop owns this one)."""
    result: list = []

    def run() -> None:
        try:
            result.append(function())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert result, "it failed or did not finish"
    return result[0]


def names(rows: list[dict]) -> list[str]:
    return sorted(r["contact"]["name"] for r in rows)


@pytest.mark.django_db
def test_rows_carry_sentiment_tags_and_when_and_the_filters_keep_only_matching_conversations_of_the_tenant(
    tenant, other_tenant, make_agent
):
    amy = make_agent(tenant, "amy")
    stranger = make_agent(other_tenant, "stranger")
    analysed(make_conversation(tenant, name="Angry shipper"), "negative", ["Shipping"])
    analysed(make_conversation(tenant, name="Angry payer"), "negative", ["Billing", "Shipping"])
    analysed(make_conversation(tenant, name="Happy returner"), "positive", ["Returns"])
    make_conversation(tenant, name="Not analysed")
    # Another tenant with the same tag name and sentiment: never in this tenant's list.
    analysed(make_conversation(other_tenant, name="Their shipper"), "negative", ["Shipping"])
    client = client_for(amy)

    everything = {r["contact"]["name"]: r for r in get(client, "conversations/", tenant)["results"]}
    assert set(everything) == {"Angry shipper", "Angry payer", "Happy returner", "Not analysed"}
    payer = everything["Angry payer"]
    assert (payer["sentiment"], payer["tags"]) == ("negative", ["Billing", "Shipping"])
    assert dt.datetime.fromisoformat(payer["analysed_at"]) == ANALYSED
    blank = everything["Not analysed"]
    assert (blank["sentiment"], blank["tags"], blank["analysed_at"]) == ("", [], None)

    assert names(get(client, "conversations/?tag=Shipping", tenant)["results"]) == ["Angry payer", "Angry shipper"]
    assert names(get(client, "conversations/?sentiment=negative", tenant)["results"]) == [
        "Angry payer",
        "Angry shipper",
    ]
    assert names(get(client, "conversations/?sentiment=positive", tenant)["results"]) == ["Happy returner"]
    assert names(get(client, "conversations/?sentiment=negative&tag=Billing", tenant)["results"]) == ["Angry payer"]
    assert get(client, "conversations/?sentiment=positive&tag=Shipping", tenant)["results"] == []
    assert get(client, "conversations/?tag=shipping", tenant)["results"] == []  # a category name, exactly
    # With the other filters, as the page combines them.
    assert names(get(client, "conversations/?scope=unassigned&state=bot&tag=Returns", tenant)["results"]) == [
        "Happy returner"
    ]
    # The other tenant's agent, same filter: only their own conversation.
    assert names(get(client_for(stranger), "conversations/?tag=Shipping", other_tenant)["results"]) == ["Their shipper"]

    refused = get(client, "conversations/?sentiment=furious", tenant)
    assert (refused["status"], refused["error"]["code"]) == (400, "invalid_sentiment")
    too_long = get(client, "conversations/?tag=" + "x" * 65, tenant)
    assert (too_long["status"], too_long["error"]["code"]) == (400, "invalid_tag")
    # Asking for the other tenant's list with a filter is refused like any other request of it.
    assert get(client, "conversations/?tag=Shipping", other_tenant)["status"] == 403


@pytest.mark.django_db
def test_meta_offers_the_tenants_categories_and_the_conversation_carries_its_analysis(tenant, other_tenant, make_agent):
    with_categories(tenant)
    other_tenant.settings = {**other_tenant.settings, "categories": [{"name": "Secret plans"}]}
    other_tenant.save(update_fields=["settings"])
    amy = make_agent(tenant, "amy")
    conversation = analysed(make_conversation(tenant, name="Angry shipper"), "negative", ["Shipping"])

    meta = get(client_for(amy), "meta/", tenant)
    assert meta["categories"] == ["Shipping", "Returns", "Billing"]
    assert meta["sentiments"] == ["negative", "neutral", "positive"]

    row = get(client_for(amy), f"conversations/{conversation.pk}/", tenant)["conversation"]
    assert (row["sentiment"], row["tags"]) == ("negative", ["Shipping"])
    assert dt.datetime.fromisoformat(row["analysed_at"]) == ANALYSED

    page = client_for(amy).get(f"/inbox/?tenant={tenant.pk}").content.decode()
    assert '<select id="ib-sentiment">' in page and '<select id="ib-tag">' in page
    assert 'id="ib-insight"' in page


@pytest.mark.django_db
def test_the_list_costs_the_same_queries_for_3_or_30_analysed_conversations(tenant, make_agent):
    amy = make_agent(tenant, "amy")
    client = client_for(amy)

    def queries_for_list() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            rows = get(client, "conversations/?sentiment=negative&tag=Shipping", tenant)["results"]
        return len(rows), len(captured.captured_queries)

    for n in range(3):
        analysed(make_conversation(tenant, name=f"A{n}"), "negative", ["Shipping", "Billing"])
    few, few_queries = queries_for_list()
    for n in range(27):
        analysed(make_conversation(tenant, name=f"B{n}"), "negative", ["Shipping"])
    many, many_queries = queries_for_list()

    assert (few, many) == (3, 30)
    assert many_queries == few_queries


@pytest.mark.django_db(transaction=True)
def test_a_new_analysis_reaches_the_tenants_agents_live_and_no_other_tenants(tenant, other_tenant, make_agent):
    with_categories(tenant)
    with_categories(other_tenant)  # the same category names in both tenants
    amy = make_agent(tenant, "amy")
    stranger = make_agent(other_tenant, "stranger")
    earlier = timezone.now() - dt.timedelta(minutes=5)  # settled: the beat task's analyse_pending takes it
    mine = make_conversation(tenant, texts=("Where is my parcel?", "It is two weeks late, this is unacceptable!"))
    theirs = make_conversation(other_tenant, texts=("Thanks a lot, you solved my problem!",))
    Conversation.objects.filter(pk__in=[mine.pk, theirs.pk]).update(last_activity_at=earlier)

    async def frames_until_note(socket) -> list[dict]:
        frames = [await socket.receive_json_from(timeout=10)]
        while frames[-1]["type"] != "note":
            frames.append(await socket.receive_json_from(timeout=10))
        return frames

    async def scenario():
        amy_socket = communicator(cookie=await sync_to_async(session_cookie)(amy), tenant=tenant)
        stranger_socket = communicator(cookie=await sync_to_async(session_cookie)(stranger), tenant=other_tenant)
        await ready(amy_socket)
        await ready(stranger_socket)

        assert await sync_to_async(analyse_conversations)() == 2  # the beat task
        # A later change of each tenant marks the end of what its agents were told about the analysis.
        await sync_to_async(services.add_note)(tenant=tenant, conversation=mine, text="end", user=amy)
        await sync_to_async(services.add_note)(tenant=other_tenant, conversation=theirs, text="end", user=stranger)
        amy_analyses = [f for f in await frames_until_note(amy_socket) if f["type"] == "analysis"]
        their_analyses = [f for f in await frames_until_note(stranger_socket) if f["type"] == "analysis"]
        await amy_socket.disconnect()
        await stranger_socket.disconnect()
        return amy_analyses, their_analyses

    amy_analyses, their_analyses = async_to_sync(scenario)()

    mine.refresh_from_db()
    assert [(f["conversation_id"], f["sentiment"], f["tags"]) for f in amy_analyses] == [
        (str(mine.pk), "negative", ["Shipping"])
    ]
    assert dt.datetime.fromisoformat(amy_analyses[0]["analysed_at"]) == mine.analysed_at
    assert [(f["conversation_id"], f["sentiment"]) for f in their_analyses] == [(str(theirs.pk), "positive")]


@pytest.mark.browser
def test_the_row_shows_sentiment_and_tags_and_the_filters_narrow_the_list_live(
    browser, daphne_servers, tenant, make_agent
):
    from playwright.sync_api import expect

    with_categories(tenant)
    make_agent(tenant, "amy", first_name="Amy")
    analysed(make_conversation(tenant, name="Angry shipper", texts=("Where is my parcel?!",)), "negative", ["Shipping"])
    analysed(make_conversation(tenant, name="Happy returner", texts=("Thanks!",)), "positive", ["Returns"])
    later = make_conversation(
        tenant, name="Late parcel", texts=("Where is my parcel?", "It is two weeks late, this is unacceptable!")
    )
    server = daphne_servers()

    amy = watched_page(browser.new_context())
    admin_login(amy.page, server.url, "amy", "pw-amy")
    amy.page.goto(f"{server.url}/inbox/")
    page = amy.page
    expect(page.locator("#ib-connection")).to_have_attribute("data-state", "online", timeout=15000)

    shipper = page.locator('.ib-row:has(.ib-row-name:text("Angry shipper"))')
    marker = shipper.locator(".ib-sentiment")
    expect(marker).to_have_attribute("data-sentiment", "negative")
    expect(marker).to_have_text("Sentiment: ☹negative")  # the word is there for everyone, not only a colour
    expect(shipper.locator(".ib-tag")).to_have_text(["Shipping"])
    expect(page.locator('.ib-row:has(.ib-row-name:text("Happy returner")) .ib-tag')).to_have_text(["Returns"])
    expect(page.locator('.ib-row:has(.ib-row-name:text("Late parcel")) .ib-sentiment')).to_have_count(0)

    # The tag filter narrows the list to the server's answer.
    page.select_option("#ib-tag", "Shipping")
    expect(page.locator(".ib-row .ib-row-name")).to_have_text(["Angry shipper"])

    # The beat task analyses the late parcel: it joins the filtered list live, with its marker and tag.
    Conversation.objects.filter(pk=later.pk).update(last_activity_at=timezone.now() - dt.timedelta(minutes=5))
    assert in_a_thread(analyse_conversations) == 1  # the beat task, as a worker runs it
    expect(page.locator(".ib-row .ib-row-name")).to_have_count(2, timeout=15000)
    late = page.locator('.ib-row:has(.ib-row-name:text("Late parcel"))')
    expect(late.locator(".ib-sentiment")).to_have_attribute("data-sentiment", "negative")
    expect(late.locator(".ib-tag")).to_have_text(["Shipping"])

    # The sentiment filter with the tag filter cleared.
    page.select_option("#ib-tag", "")
    page.select_option("#ib-sentiment", "positive")
    expect(page.locator(".ib-row .ib-row-name")).to_have_text(["Happy returner"])

    # The contact panel: sentiment, tags and when they were analysed.
    page.locator(".ib-row button").click()
    insight = page.locator("#ib-insight")
    expect(insight.locator(".ib-sentiment")).to_have_attribute("data-sentiment", "positive")
    expect(insight.locator(".ib-tag")).to_have_text(["Returns"])
    expect(insight.locator(".ib-analysed-at")).to_have_attribute("data-at", ANALYSED.isoformat())

    if os.environ.get("INBOX_SCREENSHOT_DIR"):
        page.set_viewport_size({"width": 1400, "height": 900})
        page.screenshot(path=os.path.join(os.environ["INBOX_SCREENSHOT_DIR"], "inbox-intelligence.png"))
    assert amy.errors == []
    assert amy.outside_requests() == []
