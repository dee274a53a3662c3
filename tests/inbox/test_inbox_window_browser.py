"""Issue 16 in Chromium against a real daphne: a WhatsApp contact whose last message was 25 hours ago.
The composer says the window has closed and offers "Send a template"; a typed reply is refused with a
clear error (nothing reaches the Graph API); the agent picks an approved template, fills its variables,
sees the preview and sends it: it reaches the local Graph API server and appears in the timeline, on
the sender's page and live on another agent's."""

from __future__ import annotations

import os

import pytest

from conversations.models import Conversation
from tests.browser import admin_login, watched_page
from tests.channels_app.conftest import inbound_from
from tests.conftest import wait_until
from tests.inbox.conftest import make_conversation
from tests.inbox.test_inbox_window import CONTACT, ORDER_UPDATE, PROMO, add_templates

pytestmark = [pytest.mark.browser]


def test_a_closed_window_offers_a_template_that_reaches_the_contact_and_the_timeline(
    browser, daphne_servers, tenant, make_agent, whatsapp, graph
):
    from playwright.sync_api import expect

    make_agent(tenant, "amy", first_name="Amy")
    make_agent(tenant, "bob", first_name="Bob")
    add_templates(whatsapp, ORDER_UPDATE, PROMO)
    inbound_from(whatsapp, CONTACT, hours_ago=25)
    conversation = make_conversation(
        tenant, channel=whatsapp, external_id=CONTACT, name="Ana", state="handoff_requested", texts=("where is it?",)
    )
    server = daphne_servers(env={"GRAPH_API_BASE_URL": graph.url})

    pages = {}
    for name in ("amy", "bob"):
        watched = watched_page(browser.new_context())
        admin_login(watched.page, server.url, name, f"pw-{name}")
        watched.page.goto(f"{server.url}/inbox/")
        expect(watched.page.locator("#ib-connection")).to_have_attribute("data-state", "online", timeout=15000)
        watched.page.locator(".ib-row button").click()
        expect(watched.page.locator(".ib-msg--user .ib-text")).to_have_text("where is it?")
        pages[name] = watched
    amy, bob = pages["amy"].page, pages["bob"].page

    notice = amy.locator("#ib-window")
    expect(notice).to_have_attribute("data-open", "false")
    expect(notice).to_have_text("Window closed 25 h after the last message: only a template can reach them.")
    expect(amy.locator("#ib-template-open")).to_be_visible()
    expect(amy.locator("#ib-template-picker")).to_be_hidden()

    # A typed reply is refused: said clearly, kept in the composer, nothing sent.
    amy.locator("#ib-text").fill("Hello Ana?")
    amy.locator("#ib-text").press("Enter")
    expect(amy.locator("#ib-error")).to_contain_text("Not sent: the customer-service window closed")
    expect(amy.locator("#ib-error")).to_contain_text("Send a template")
    expect(amy.locator("#ib-text")).to_have_value("Hello Ana?")
    assert graph.requests == []

    # The picker lists the approved template only; its variables fill the preview.
    amy.click("#ib-template-open")
    options = amy.locator("#ib-template-select option")
    expect(options).to_have_text(["Choose a template…", "order_update (en_US) · utility"])
    amy.locator("#ib-template-select").select_option(label="order_update (en_US) · utility")
    amy.get_by_label("Header image link").fill("https://cdn.example.com/parcel.jpg")
    amy.get_by_label("{{1}}").fill("Ana")
    amy.get_by_label("{{2}}").fill("A42")
    expect(amy.locator("#ib-template-preview")).to_have_text(
        "[image]\n\nHi Ana, your order A42 has shipped.\n\nAcme Store\n\n[Track it]"
    )
    if os.environ.get("INBOX_SCREENSHOT_DIR"):  # to look at it: INBOX_SCREENSHOT_DIR=/tmp pytest ...
        amy.set_viewport_size({"width": 1400, "height": 900})
        amy.screenshot(path=os.path.join(os.environ["INBOX_SCREENSHOT_DIR"], "inbox-template.png"))
    amy.click("#ib-template-send")

    sent = "[image]\n\nHi Ana, your order A42 has shipped.\n\nAcme Store\n\n[Track it]"
    expect(amy.locator(".ib-msg--agent .ib-text").last).to_have_text(sent, timeout=15000)
    expect(amy.locator("#ib-template-picker")).to_be_hidden()
    expect(amy.locator("#ib-state-badge")).to_have_attribute("data-state", "agent", timeout=15000)
    expect(bob.locator(".ib-msg--agent .ib-text").last).to_have_text(sent, timeout=15000)  # live
    posted = wait_until(lambda: [r["body"] for r in graph.requests if r["body"].get("type") == "template"])
    assert posted[0]["template"]["name"] == "order_update"
    assert posted[0]["template"]["components"][1]["parameters"] == [
        {"type": "text", "text": "Ana"},
        {"type": "text", "text": "A42"},
    ]
    assert [r["body"].get("type") for r in graph.requests] == ["template"]  # no free-form "joined" text
    assert Conversation.objects.get(pk=conversation.pk).assignee.username == "amy"
    refused_reply = "Failed to load resource: the server responded with a status of 409 (Conflict)"
    assert [e for e in pages["amy"].errors if e != refused_reply] == []  # Chromium logs the 409 it was given
    for watched in pages.values():
        assert watched.outside_requests() == []
    assert pages["bob"].errors == []
