"""The issue's "done when": two agents and a web chat visitor in Chromium (three browser contexts, each its
own session) against a real daphne, with a real Celery worker, and a WhatsApp contact through signed
webhooks and the local Graph API server.

The visitor asks for a human; Amy's list shows it live with a notification; Amy assigns it to herself
and Bob's page shows the assignment live; Amy types (the visitor sees typing), replies, writes a private
note (never shown to the visitor), uses a canned reply and resolves; the visitor answers the satisfaction
question and it is stored. The WhatsApp contact's messages appear live in the same inbox and Amy's reply
reaches the Graph API."""

from __future__ import annotations

import os

import pytest

from channels_app.models import Channel, new_widget_key
from conversations.models import CannedReply, SatisfactionRating
from tests.browser import admin_login, watched_page
from tests.conftest import wait_until
from tests.conversations.conftest import deliver

pytestmark = [pytest.mark.browser]


# Notifications recorded instead of shown (a headless browser shows none): the page's own calls.
RECORD_NOTIFICATIONS = """
window.__notifications = [];
window.Notification = function (title, options) { window.__notifications.push(title); this.close = function () {}; };
window.Notification.permission = "granted";
window.Notification.requestPermission = function () { return Promise.resolve("granted"); };
"""


def test_two_agents_a_visitor_and_a_whatsapp_contact_in_one_live_inbox(
    browser, daphne_servers, live_worker, tenant, make_agent, whatsapp, graph, openai_server
):
    from playwright.sync_api import expect

    make_agent(tenant, "amy", first_name="Amy")
    make_agent(tenant, "bob", first_name="Bob")
    CannedReply.objects.create(tenant=tenant, shortcut="thanks", text="Thank you for your patience!")
    server = daphne_servers(env={"GRAPH_API_BASE_URL": graph.url})
    Channel.objects.create(
        tenant=tenant, type=Channel.Type.WEBCHAT, name="Shop site", external_id=new_widget_key(),
        config={"allowed_origins": [server.url], "demo_page": True},
    )  # fmt: skip

    amy_context = browser.new_context()
    amy_context.add_init_script(RECORD_NOTIFICATIONS)
    amy = watched_page(amy_context)
    admin_login(amy.page, server.url, "amy", "pw-amy")
    amy.page.goto(f"{server.url}/inbox/")
    bob = watched_page(browser.new_context())
    admin_login(bob.page, server.url, "bob", "pw-bob")
    bob.page.goto(f"{server.url}/inbox/")
    for agent in (amy.page, bob.page):
        expect(agent.locator("#ib-connection")).to_have_attribute("data-state", "online", timeout=15000)

    # The visitor asks for a human on the web widget.
    visitor = watched_page(browser.new_context())
    visitor.page.goto(f"{server.url}/demo/{tenant.slug}/")
    widget = visitor.page.locator(".mc-widget")
    expect(widget).to_have_attribute("data-connection", "online", timeout=15000)
    visitor.page.get_by_label("Your message").fill("human please")
    visitor.page.keyboard.press("Enter")
    notice = "I'm passing you to a member of our team."
    expect(widget.get_by_text(notice)).to_have_count(1, timeout=20000)

    # Amy's list shows it live, waiting, with a notification.
    row = amy.page.locator('.ib-row[data-state="handoff_requested"]')
    expect(row).to_have_count(1, timeout=15000)
    expect(row.locator(".ib-preview")).to_contain_text(notice)
    expect(row.locator(".ib-waiting")).to_contain_text("waiting")
    wait_until(lambda: amy.page.evaluate("window.__notifications.length") >= 1)
    assert "asks for a human" in amy.page.evaluate("window.__notifications[0]")

    # Nothing is open yet: no conversation controls, a hint instead.
    expect(amy.page.locator(".ib-conversation")).to_be_hidden()
    expect(amy.page.get_by_text("Choose a conversation on the left")).to_be_visible()

    # Amy assigns it to herself; Bob sees the assignment live; the visitor is told Amy joined.
    row.locator("button").click()
    expect(amy.page.get_by_text("Choose a conversation on the left")).to_be_hidden()
    expect(amy.page.locator(".ib-msg--user .ib-text")).to_have_text("human please")
    amy.page.click("#ib-take")
    expect(bob.page.locator(".ib-row .ib-assignee")).to_have_text("Amy", timeout=15000)
    expect(widget.get_by_text("Amy joined the conversation.")).to_have_count(1, timeout=15000)

    # Bob opens it too: it names Amy as the assignee.
    bob.page.locator(".ib-row button").click()
    expect(bob.page.locator("#ib-owner")).to_contain_text("Amy is assigned")

    # Amy types: the visitor sees typing, Bob sees "Amy is replying"; Enter sends; the visitor sees it.
    composer = amy.page.locator("#ib-text")
    composer.click()
    composer.type("Hello, I am Amy")
    expect(visitor.page.locator(".mc-typing")).to_be_visible(timeout=15000)
    expect(bob.page.locator("#ib-agent-typing")).to_have_text("Amy is replying…", timeout=15000)
    composer.press("Enter")
    expect(widget.locator(".mc-msg--agent .mc-text")).to_have_text("Hello, I am Amy", timeout=15000)

    # The visitor types: Amy sees it.
    visitor.page.get_by_label("Your message").type("one more")
    expect(amy.page.locator("#ib-contact-typing")).to_be_visible(timeout=15000)
    visitor.page.get_by_label("Your message").fill("")

    # A private note: in Amy's timeline, never at the visitor.
    amy.page.click('.ib-modes button[data-mode="note"]')
    composer.fill("VIP customer, secret note")
    composer.press("Enter")
    expect(amy.page.locator(".ib-note .ib-text")).to_have_text("VIP customer, secret note")
    expect(bob.page.locator(".ib-note .ib-text")).to_have_text("VIP customer, secret note", timeout=15000)
    expect(bob.page.locator(".ib-row .ib-assignee")).to_have_text("Amy")

    # A canned reply by /shortcut.
    amy.page.click('.ib-modes button[data-mode="reply"]')
    composer.fill("")
    composer.type("/tha")
    expect(amy.page.locator("#ib-canned")).to_be_visible()
    expect(amy.page.locator("#ib-canned .ib-canned-item")).to_have_count(1)
    composer.press("Enter")
    expect(composer).to_have_value("Thank you for your patience!")
    composer.press("Enter")
    expect(widget.locator(".mc-msg--agent .mc-text").last).to_have_text("Thank you for your patience!", timeout=15000)

    # Resolve: the closing message and the satisfaction buttons; the visitor answers 4.
    amy.page.click("#ib-resolve")
    expect(amy.page.locator("#ib-state-badge")).to_have_attribute("data-state", "resolved", timeout=15000)
    expect(widget.get_by_text("This conversation is now closed.", exact=False)).to_have_count(1, timeout=15000)
    visitor.page.locator('.mc-rating-button[data-score="4"]').click()
    rating = wait_until(lambda: SatisfactionRating.objects.first())
    assert rating.score == 4
    expect(widget.get_by_text("Thank you for your feedback!")).to_have_count(1, timeout=15000)
    assert "secret note" not in widget.inner_text()

    # A WhatsApp contact appears live in the same inbox; Amy's reply reaches the Graph API.
    deliver(whatsapp, text="I want to talk to an agent", sender="15557654321")
    wa_row = amy.page.locator('.ib-row[data-state="handoff_requested"]')
    expect(wa_row.locator(".ib-channel")).to_have_text("WhatsApp", timeout=20000)
    wa_row.locator("button").click()
    expect(amy.page.locator(".ib-msg--user .ib-text")).to_have_text("I want to talk to an agent")
    deliver(whatsapp, text="Are you there?", sender="15557654321")
    expect(amy.page.locator(".ib-msg--user .ib-text").last).to_have_text("Are you there?", timeout=20000)
    composer.fill("Yes, Amy here on WhatsApp")
    composer.press("Enter")
    wait_until(lambda: "Yes, Amy here on WhatsApp" in graph.text_bodies())
    expect(amy.page.locator(".ib-msg--system .ib-text")).to_have_text("Amy joined the conversation.")
    assert "Amy joined the conversation." in graph.text_bodies()  # answering it assigned it to Amy
    expect(bob.page.locator('.ib-row:has(.ib-channel:text("WhatsApp")) .ib-assignee')).to_have_text("Amy")

    # Amy looks at another conversation: a new message in hers (assigned to her) notifies her.
    amy.page.locator('.ib-row:has(.ib-channel:text("Web chat")) button').click()
    expect(amy.page.locator(".ib-row[aria-current=true] .ib-channel")).to_have_text("Web chat")
    deliver(whatsapp, text="Thanks!", sender="15557654321")
    wait_until(lambda: "New message from Alice" in amy.page.evaluate("window.__notifications"))
    expect(amy.page.locator('.ib-row:has(.ib-channel:text("WhatsApp")) .ib-unread')).to_have_text("1")

    if os.environ.get("INBOX_SCREENSHOT_DIR"):  # to look at it: INBOX_SCREENSHOT_DIR=/tmp pytest ...
        amy.page.set_viewport_size({"width": 1400, "height": 900})
        amy.page.screenshot(path=os.path.join(os.environ["INBOX_SCREENSHOT_DIR"], "inbox.png"))
        visitor.page.screenshot(path=os.path.join(os.environ["INBOX_SCREENSHOT_DIR"], "inbox-visitor.png"))
    for watched in (amy, bob):
        assert watched.errors == []
    for watched in (amy, bob, visitor):
        assert watched.outside_requests() == []
