"""The widget in Debian's Chromium (headless, driven by Playwright; no downloaded browser) against a real
daphne serving the demo page, the session API and the WebSocket."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from channels_app.models import Channel, InboundEvent, new_widget_key

pytestmark = [pytest.mark.browser]


def demo_channel(tenant, server) -> Channel:
    return Channel.objects.create(
        tenant=tenant,
        type=Channel.Type.WEBCHAT,
        name="Demo page",
        external_id=new_widget_key(),
        config={"allowed_origins": [server.url], "demo_page": True},
    )


def in_thread(fn, **kwargs):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, **kwargs).result(timeout=30)


def outbox(page, channel) -> list:
    raw = page.evaluate(f"localStorage.getItem('metachat.webchat.{channel.external_id}.outbox')")
    return json.loads(raw or "[]")


def test_demo_page_sends_a_message_and_shows_it_again_after_reload(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    channel = demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")

    log = page.get_by_role("log", name="Conversation")
    expect(log).to_have_attribute("aria-live", "polite")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)
    page.get_by_label("Your message").fill("Where is my order 1234?")
    page.keyboard.press("Enter")

    sent = log.locator('.mc-msg--user[data-status="stored"]')
    expect(sent).to_have_count(1, timeout=10000)
    expect(sent).to_contain_text("Where is my order 1234?")
    assert outbox(page, channel) == []
    [row] = InboundEvent.objects.for_tenant(tenant).filter(channel=channel)
    assert row.normalized["text"] == "Where is my order 1234?"

    page.reload()
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)
    expect(log.locator(".mc-msg--user")).to_have_count(1, timeout=10000)
    expect(log.locator(".mc-msg--user")).to_contain_text("Where is my order 1234?")
    expect(log.locator(".mc-msg--user")).to_have_attribute("data-status", "stored")
    assert InboundEvent.objects.for_tenant(tenant).filter(channel=channel).count() == 1


def test_widget_is_keyboard_operable(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    launcher = page.locator(".mc-launcher")
    expect(launcher).to_have_attribute("aria-expanded", "true")

    page.keyboard.press("Escape")  # the demo opens the chat with the focus in the message box
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(launcher).to_be_focused()
    expect(launcher).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("Enter")
    expect(page.get_by_label("Your message")).to_be_focused()
    expect(page.get_by_role("dialog", name=re.compile(tenant.name))).to_be_visible()


def test_message_typed_while_the_server_is_down_is_kept_and_sent_when_it_is_back(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    channel = demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    widget = page.locator(".mc-widget")
    expect(widget).to_have_attribute("data-connection", "online", timeout=15000)

    server.stop()
    expect(widget).not_to_have_attribute("data-connection", "online", timeout=10000)
    page.get_by_label("Your message").fill("Typed while you were away")
    page.keyboard.press("Enter")
    pending = page.locator(".mc-msg--user")
    expect(pending).to_have_attribute("data-status", "pending")
    assert [item["text"] for item in outbox(page, channel)] == ["Typed while you were away"]

    daphne_servers(port=server.port)  # back on the same address; the widget reconnects by itself
    expect(pending).to_have_attribute("data-status", "stored", timeout=40000)
    assert outbox(page, channel) == []
    assert [r.normalized["text"] for r in InboundEvent.objects.for_tenant(tenant).filter(channel=channel)] == [
        "Typed while you were away"
    ]


def test_messages_over_the_rate_limit_wait_in_the_outbox_and_none_is_sent_twice(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers(env={"WEBCHAT_RATE_LIMIT_PER_MINUTE": "2"})
    channel = demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)
    box = page.get_by_label("Your message")
    for text in ("one", "two", "three"):  # typed faster than the acks come back
        box.fill(text)
        page.keyboard.press("Enter")

    messages = page.locator(".mc-msg--user")
    expect(messages.nth(0)).to_have_attribute("data-status", "stored", timeout=10000)
    expect(messages.nth(1)).to_have_attribute("data-status", "stored", timeout=10000)
    expect(messages.nth(2)).to_have_attribute("data-status", "held", timeout=10000)
    expect(messages.nth(2).locator(".mc-meta")).to_have_text("Waiting to send (too many messages)…")
    assert [item["text"] for item in outbox(page, channel)] == ["three"]
    rows = InboundEvent.objects.for_tenant(tenant).filter(channel=channel).order_by("id")
    assert [r.normalized["text"] for r in rows] == ["one", "two"]


def test_streamed_reply_sources_typing_and_handoff_render_as_text(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    from channels_app.adapters.webchat import WebchatAdapter

    server = daphne_servers()
    channel = demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)
    visitor_id = page.evaluate(f"JSON.parse(localStorage.getItem('metachat.webchat.{channel.external_id}.visitor'))")
    visitor_id = visitor_id.split(".")[0]
    adapter = WebchatAdapter()
    target = {"channel_external_id": channel.external_id, "recipient_id": visitor_id, "credentials": {}}

    # As a Celery worker would (Playwright's sync API keeps an event loop in this thread).
    in_thread(adapter.send_notice, kind="typing", data={"typing": True}, **target)
    expect(page.locator(".mc-typing")).to_be_visible()
    chunks = iter(["Refunds take ", "<b>5</b> days", " <img src=x onerror=window.pwned=1>"])
    in_thread(adapter.stream_text, chunks=chunks, message_id=99, **target)
    in_thread(
        adapter.send_notice,
        kind="sources",
        data={"message_id": 99, "sources": [{"title": "Refund policy", "page": 2, "url": "javascript:alert(1)"}]},
        **target,
    )
    in_thread(adapter.send_notice, kind="handoff", data={"state": "handoff_requested"}, **target)

    reply = page.locator('.mc-msg--assistant[data-id="m99"]')
    expect(reply.locator(".mc-text")).to_have_text("Refunds take <b>5</b> days <img src=x onerror=window.pwned=1>")
    expect(reply.locator(".mc-sources li")).to_have_text("Refund policy (p. 2)")
    assert reply.locator(".mc-sources a").count() == 0  # a javascript: URL is never a link
    assert page.evaluate("window.pwned") is None
    expect(page.locator(".mc-typing")).to_be_hidden()
    expect(page.locator(".mc-notice")).to_have_text("You will be connected to a person shortly.")
    if os.environ.get("WEBCHAT_SCREENSHOT_DIR"):  # to look at the widget: WEBCHAT_SCREENSHOT_DIR=/tmp pytest ...
        page.screenshot(path=os.path.join(os.environ["WEBCHAT_SCREENSHOT_DIR"], "webchat-widget.png"))


RETURNS_POLICY = b"""# Returns policy

You can return any device within 30 days of delivery for a full refund, provided it is undamaged.
Refunds are paid to the original payment method within 5 business days of receiving the device.
"""


def test_grounded_answer_with_its_source_and_the_history_after_reload(browser, daphne_servers, live_worker, tenant):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from playwright.sync_api import expect

    from knowledge.models import Document
    from knowledge.services import document_upload
    from tests.conftest import wait_until

    document = document_upload(
        tenant=tenant,
        file=SimpleUploadedFile("returns.md", RETURNS_POLICY, content_type="text/markdown"),
        title="Returns policy",
    )
    wait_until(
        lambda: Document.objects.for_tenant(tenant).get(pk=document.pk).status == Document.Status.INDEXED,
        timeout=float(os.environ.get("WEBCHAT_E2E_INDEX_TIMEOUT", "120")),
    )
    server = daphne_servers()
    demo_channel(tenant, server)
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    log = page.get_by_role("log", name="Conversation")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)

    page.get_by_label("Your message").fill("How many days do I have to return a device?")
    page.keyboard.press("Enter")

    answer = log.locator(".mc-msg--assistant").last
    expect(answer).to_contain_text("30 days", timeout=60000)
    expect(answer.locator(".mc-sources")).to_contain_text("Returns policy", timeout=10000)

    page.reload()
    expect(log.locator(".mc-msg--user")).to_contain_text("How many days do I have to return a device?", timeout=15000)
    expect(log.locator(".mc-msg--assistant").last).to_contain_text("30 days")
    expect(log.locator(".mc-msg--assistant").last.locator(".mc-sources")).to_contain_text("Returns policy")
