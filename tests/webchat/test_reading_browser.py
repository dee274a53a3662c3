"""The widget reads well, in Debian's Chromium against a real daphne: markdown rendered safely (and
hostile markup inert), timestamps, the greeting, texts and colours set by the host page, full screen on
a phone, the browser's offline state; files shown inline or as downloads and options to tap, a tap
reaching the turn pipeline with its payload, and all of it again in the history after a reload."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from channels_app.adapters.webchat import WebchatAdapter
from channels_app.models import Channel, new_widget_key

pytestmark = [pytest.mark.browser]

# The tenant's own page: the demo page, with the script tag's attributes and the host page's style set
# as a site embedding the widget would (after parsing, before the deferred widget script runs).
EMBED = """
document.addEventListener("readystatechange", function () {
  if (document.readyState !== "interactive") return;
  var script = document.querySelector("script[data-widget-key]");
  var attributes = %s;
  for (var name in attributes) script.setAttribute(name, attributes[name]);
  var style = document.createElement("style");
  style.textContent = ".mc-widget { --mc-accent: rgb(180, 20, 60); } main { min-height: 3000px; }";
  document.head.appendChild(style);
});
"""


def webchat_channel(tenant, server, **config) -> Channel:
    return Channel.objects.create(
        tenant=tenant,
        type=Channel.Type.WEBCHAT,
        name="Shop site",
        external_id=new_widget_key(),
        config={"allowed_origins": [server.url], "demo_page": True, **config},
    )


def host_page(context_or_browser, server, tenant, *, open_chat: bool = True):
    page = context_or_browser.new_page()
    attributes = {
        "data-title": "Acme help",
        "data-open": "true" if open_chat else "false",
        "data-placeholder": "Ask Acme anything",
        "data-launcher-label": "Chat with Acme",
    }
    page.add_init_script(EMBED % json.dumps(attributes))
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    return page


def in_thread(fn, **kwargs):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, **kwargs).result(timeout=30)


def visitor_of(page, channel) -> str:
    token = page.evaluate(f"JSON.parse(localStorage.getItem('metachat.webchat.{channel.external_id}.visitor'))")
    return token.split(".")[0]


MARKDOWN_REPLY = """**Returns** are free within *30 days*:

- pack the device
- print the `label`

1. Book a pickup
2. Hand it over

Details: [our policy](https://shop.example/returns) or https://shop.example/faq.
Write to [us](mailto:help@shop.example).
<img src=x onerror="window.pwned=1"> [click me](javascript:window.pwned=2) [data](data:text/html,hi)"""


def test_replies_render_markdown_safely_with_times_and_the_host_pages_texts(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    channel = webchat_channel(tenant, server, greeting="Hello! Ask me about **returns**.")
    page = host_page(browser, server, tenant)
    widget = page.locator(".mc-widget")
    log = page.get_by_role("log", name="Conversation")
    expect(widget).to_have_attribute("data-connection", "online", timeout=15000)

    # The host page's texts and colour, and the channel's greeting (markdown too) for a new visitor.
    expect(page.get_by_role("dialog", name="Acme help")).to_be_visible()
    expect(page.get_by_label("Your message")).to_have_attribute("placeholder", "Ask Acme anything")
    greeting = log.locator(".mc-msg").first
    expect(greeting).to_have_attribute("data-id", "greeting")
    expect(greeting.locator(".mc-text strong")).to_have_text("returns")
    send_colour = page.locator(".mc-send").evaluate("b => getComputedStyle(b).backgroundColor")
    assert send_colour == "rgb(180, 20, 60)"

    target = {"channel_external_id": channel.external_id, "recipient_id": visitor_of(page, channel), "credentials": {}}
    in_thread(WebchatAdapter().send_text, text=MARKDOWN_REPLY, message_id=501, **target)
    # A streamed reply whose markup is split across chunks renders right once complete.
    chunks = iter(["You can **pay", " by card** or:\n\n- Pay", "Pal\n- bank ", "transfer"])
    in_thread(WebchatAdapter().stream_text, chunks=chunks, message_id=502, **target)

    reply = log.locator('[data-id="m501"] .mc-text')
    expect(reply.locator("strong").first).to_have_text("Returns")
    expect(reply.locator("em")).to_have_text("30 days")
    expect(reply.locator("ul > li")).to_have_text(["pack the device", "print the label"])
    expect(reply.locator("code")).to_have_text("label")
    expect(reply.locator("ol > li")).to_have_text(["Book a pickup", "Hand it over"])
    links = reply.locator("a")
    expect(links).to_have_text(["our policy", "https://shop.example/faq", "us"])
    assert [links.nth(i).get_attribute("href") for i in range(3)] == [
        "https://shop.example/returns", "https://shop.example/faq", "mailto:help@shop.example"
    ]  # fmt: skip
    assert links.first.get_attribute("target") == "_blank"
    assert links.first.get_attribute("rel") == "noopener noreferrer"
    # Hostile markup: shown as text, never an element, never a script: or data: link.
    expect(reply).to_contain_text('<img src=x onerror="window.pwned=1">')
    expect(reply).to_contain_text("click me")
    assert page.locator(".mc-widget img").count() == 0
    assert page.locator('.mc-widget a[href^="javascript"], .mc-widget a[href^="data"]').count() == 0
    assert page.evaluate("window.pwned") is None

    streamed = log.locator('[data-id="m502"] .mc-text')
    expect(streamed.locator("strong")).to_have_text("pay by card")
    expect(streamed.locator("li")).to_have_text(["PayPal", "bank transfer"])
    assert "**" not in streamed.inner_text()

    # Every message has its time, in the visitor's local time, with the machine-readable instant.
    page.get_by_label("Your message").fill("Thanks!")
    page.keyboard.press("Enter")
    expect(log.locator('.mc-msg--user[data-status="stored"]')).to_have_count(1, timeout=10000)
    times = log.locator(".mc-msg time.mc-time")
    expect(times).to_have_count(4)
    for i in range(4):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", times.nth(i).get_attribute("datetime"))
        assert re.search(r"\d{1,2}:\d\d", times.nth(i).inner_text())

    page.reload()  # a returning visitor: the history, rendered the same way, and no greeting
    expect(log.locator(".mc-msg--user")).to_have_text(re.compile("Thanks!"), timeout=15000)
    expect(log.locator('[data-id="greeting"]')).to_have_count(0)


def test_the_open_chat_fills_a_phones_screen_and_the_page_behind_does_not_scroll(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    webchat_channel(tenant, server)
    context = browser.new_context(viewport={"width": 375, "height": 667}, has_touch=True)
    page = host_page(context, server, tenant, open_chat=False)
    launcher = page.get_by_role("button", name="Chat with Acme")
    expect(launcher).to_be_visible()

    launcher.click()
    panel = page.get_by_role("dialog", name="Acme help")
    expect(panel).to_be_visible()
    box = panel.bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 375, 667)
    assert page.evaluate("getComputedStyle(document.documentElement).overflow") == "hidden"
    expect(page.get_by_label("Your message")).to_be_in_viewport()

    page.get_by_role("button", name="Close chat").click()
    expect(panel).to_be_hidden()
    assert page.evaluate("getComputedStyle(document.documentElement).overflow") == "visible"
    context.close()


def test_the_browsers_offline_state_is_shown_and_online_again_when_back(browser, daphne_servers, tenant):
    from playwright.sync_api import expect

    server = daphne_servers()
    webchat_channel(tenant, server)
    context = browser.new_context()
    page = host_page(context, server, tenant)
    widget = page.locator(".mc-widget")
    status = page.get_by_role("status")
    expect(widget).to_have_attribute("data-connection", "online", timeout=15000)
    expect(status).to_have_text("Online")

    context.set_offline(True)
    expect(widget).to_have_attribute("data-connection", "offline")
    expect(status).to_contain_text("Offline")

    context.set_offline(False)
    expect(widget).to_have_attribute("data-connection", "online", timeout=15000)
    expect(status).to_have_text("Online")
    page.get_by_label("Your message").fill("still there?")  # and the chat works again
    page.keyboard.press("Enter")
    expect(page.locator('.mc-msg--user[data-status="stored"]')).to_have_count(1, timeout=10000)
    context.close()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def test_an_agents_files_and_options_show_and_a_tap_reaches_the_pipeline(
    browser, daphne_servers, live_worker, tenant, tenant_api
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from playwright.sync_api import expect

    from conversations.models import Conversation, Message
    from tests.conftest import wait_until

    server = daphne_servers()
    channel = webchat_channel(tenant, server)
    page = host_page(browser, server, tenant)
    log = page.get_by_role("log", name="Conversation")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)
    page.get_by_label("Your message").fill("Can you send me my invoice?")
    page.keyboard.press("Enter")
    wait_until(lambda: Conversation.objects.for_tenant(tenant).filter(channel=channel).exists(), timeout=30)
    conversation = Conversation.objects.for_tenant(tenant).get(channel=channel)
    base = f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}"

    def agent_sends(path: str, data: dict, fmt: str) -> None:
        response = in_thread(tenant_api.post, path=f"{base}/{path}/", data=data, format=fmt)
        assert response.status_code == 201, response.content

    agent_sends("media", {"file": SimpleUploadedFile("map.png", PNG, content_type="image/png")}, "multipart")
    agent_sends(
        "media",
        {"file": SimpleUploadedFile("invoice-42.pdf", PDF, content_type="application/pdf"), "caption": "Your **invoice**"},
        "multipart",
    )  # fmt: skip
    options = [{"id": "slot_am", "title": "Morning"}, {"id": "slot_pm", "title": "Afternoon"}]
    agent_sends("choices", {"body": "When should we deliver?", "options": options}, "json")

    image = log.locator("img.mc-image")
    expect(image).to_have_count(1, timeout=10000)
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 1  # loaded through the visitor's own URL
    download = log.locator("a.mc-download")
    expect(download).to_have_text(f"invoice-42.pdf ({len(PDF)} B)")
    expect(download.locator("xpath=ancestor::div[contains(@class,'mc-msg')]").locator(".mc-text strong")).to_have_text(
        "invoice"
    )
    fetched = page.evaluate(
        "href => fetch(href).then(r => r.arrayBuffer().then(b => [r.status, b.byteLength]))",
        download.get_attribute("href"),
    )
    assert fetched == [200, len(PDF)]

    buttons = log.locator("button.mc-choice")
    expect(buttons).to_have_text(["Morning", "Afternoon"])
    buttons.nth(1).click()
    for i in range(2):
        expect(buttons.nth(i)).to_be_disabled()
    expect(buttons.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(log.locator('.mc-msg--user[data-status="stored"]').last).to_contain_text("Afternoon", timeout=10000)

    def tap_stored() -> Message | None:
        return (
            Message.objects.for_tenant(tenant)
            .filter(conversation=conversation, direction=Message.Direction.INBOUND, content="Afternoon")
            .first()
        )

    wait_until(lambda: tap_stored() is not None, timeout=30)
    normalized = tap_stored().payload["normalized"]
    assert (normalized["type"], normalized["reply"]["payload"]) == ("interactive", "slot_pm")

    page.reload()  # the history has the files and the options, already answered
    expect(log.locator("img.mc-image")).to_have_count(1, timeout=15000)
    expect(log.locator("img.mc-image")).to_have_js_property("complete", True)
    assert log.locator("img.mc-image").evaluate("img => img.naturalWidth") == 1
    expect(log.locator("a.mc-download")).to_have_text(f"invoice-42.pdf ({len(PDF)} B)")
    expect(log.locator("button.mc-choice")).to_have_count(2)
    for i in range(2):
        expect(log.locator("button.mc-choice").nth(i)).to_be_disabled()
    stored = json.loads(page.evaluate(f"localStorage.getItem('metachat.webchat.{channel.external_id}.outbox')"))
    assert stored == []
