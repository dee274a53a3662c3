"""Options to tap: WhatsApp reply buttons and list messages, Messenger quick replies, sent in each
platform's wire format to the local Graph API server; a tap comes back through the signed webhook as a
normalized message whose reply.payload is the option's id."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from channels_app import services
from channels_app.adapters.base import Choice, Choices, InvalidChoices
from conversations.models import Conversation, Message
from tests.channels_app.conftest import (
    MS_PAGE_ID,
    MS_SECRET,
    WA_PHONE_NUMBER_ID,
    WA_SECRET,
    conversation_with,
    inbound_from,
    stored_messages,
)

WA_USER = "972987654321"
MS_USER = "6944325612345678"
SLOTS = [{"id": "slot_am", "title": "Morning"}, {"id": "slot_pm", "title": "Afternoon"}]


def offer(api: Any, conversation: Conversation, **body: Any) -> Any:
    url = f"/api/tenants/{conversation.tenant_id}/conversations/{conversation.pk}/choices/"
    return api.post(url, body, format="json")


def test_whatsapp_reply_buttons_from_the_api(wa_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    conversation = conversation_with(wa_channel, WA_USER)

    response = offer(tenant_api, conversation, body="When should we deliver?", options=SLOTS, footer="Acme")

    assert response.status_code == 201, response.content
    [post] = graph.posts()
    assert post["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": WA_USER,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "When should we deliver?"},
            "footer": {"text": "Acme"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "slot_am", "title": "Morning"}},
                    {"type": "reply", "reply": {"id": "slot_pm", "title": "Afternoon"}},
                ]
            },
        },
    }
    message = Message.objects.get(conversation=conversation)
    assert (message.kind, message.status) == ("choices", "sent")
    assert message.content == "When should we deliver?\n\n1. Morning\n2. Afternoon\n\nAcme"


def test_more_than_three_options_become_a_whatsapp_list(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    options = [Choice(id=f"size_{s}", title=s.upper(), description=f"Size {s}") for s in ("s", "m", "l", "xl")]

    services.send_choices(
        channel=wa_channel,
        recipient_id=WA_USER,
        choices=Choices(body="Which size?", options=options, header="Sizes", button_label="Pick a size"),
    )

    interactive = graph.posts()[0]["json"]["interactive"]
    assert interactive["type"] == "list"
    assert interactive["header"] == {"type": "text", "text": "Sizes"}
    assert interactive["action"]["button"] == "Pick a size"
    assert interactive["action"]["sections"][0]["rows"][1] == {"id": "size_m", "title": "M", "description": "Size m"}


def test_messenger_quick_replies(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=1)

    services.send_choices(
        channel=ms_channel,
        recipient_id=MS_USER,
        choices=Choices(body="When should we deliver?", options=[Choice(**s) for s in SLOTS]),
    )

    [post] = graph.posts()
    assert post["path"] == f"/v25.0/{MS_PAGE_ID}/messages"
    assert post["json"] == {
        "recipient": {"id": MS_USER},
        "messaging_type": "RESPONSE",
        "message": {
            "text": "When should we deliver?",
            "quick_replies": [
                {"content_type": "text", "title": "Morning", "payload": "slot_am"},
                {"content_type": "text", "title": "Afternoon", "payload": "slot_pm"},
            ],
        },
    }


@pytest.mark.parametrize(
    ("options", "style", "expected"),
    [
        ([{"id": f"o{i}", "title": f"Option {i}"} for i in range(11)], "auto", "at most 10 rows"),
        ([{"id": f"o{i}", "title": f"Option {i}"} for i in range(4)], "buttons", "at most 3 buttons"),
        ([{"id": "a", "title": "A"}, {"id": "a", "title": "B"}], "auto", "own non-empty id"),
        ([{"id": "a", "title": "A very long button title"}], "buttons", "1-20 characters"),
    ],
)
def test_options_whatsapp_cannot_show_are_refused_before_sending(
    wa_channel, graph, tenant_api, options, style, expected
):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    conversation = conversation_with(wa_channel, WA_USER)

    response = offer(tenant_api, conversation, body="Pick one", options=options, layout=style)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_choices"
    assert expected in response.json()["error"]["message"]
    assert graph.requests == []
    assert not Message.objects.filter(conversation=conversation).exists()


def test_messenger_refuses_a_14th_quick_reply(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=1)
    choices = Choices(body="Pick", options=[Choice(id=f"o{i}", title=f"O{i}") for i in range(14)])
    with pytest.raises(InvalidChoices, match="at most 13"):
        services.send_choices(channel=ms_channel, recipient_id=MS_USER, choices=choices)
    assert graph.requests == []


def test_options_outside_the_window_are_refused(wa_channel, ms_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=30)
    response = offer(tenant_api, conversation_with(wa_channel, WA_USER), body="Pick", options=SLOTS)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "outside_customer_service_window"
    # Messenger: HUMAN_AGENT covers an agent's text after 24 h, not options to tap.
    inbound_from(ms_channel, MS_USER, hours_ago=30)
    response = offer(tenant_api, conversation_with(ms_channel, MS_USER), body="Pick", options=SLOTS)
    assert response.status_code == 409
    assert graph.requests == []


def test_a_whatsapp_tap_comes_back_with_its_payload(wa_channel, post_webhook):
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": WA_USER}],
            "messages": [{
                "from": WA_USER, "id": "wamid.TAP1", "timestamp": str(int(time.time())), "type": "interactive",
                "context": {"from": "15550001111", "id": "wamid.OUT1=="},
                "interactive": {"type": "button_reply", "button_reply": {"id": "slot_pm", "title": "Afternoon"}},
            }],
        }}]}],
    }  # fmt: skip
    assert post_webhook("whatsapp", json.dumps(payload).encode(), WA_SECRET).status_code == 200

    [tap] = stored_messages(wa_channel)
    assert (tap["type"], tap["text"]) == ("interactive", "Afternoon")
    assert tap["reply"]["payload"] == "slot_pm"
    assert tap["context_message_id"] == "wamid.OUT1=="


def test_a_messenger_tap_comes_back_with_its_payload(ms_channel, post_webhook):
    now_ms = int(time.time() * 1000)
    payload = {
        "object": "page",
        "entry": [{"id": MS_PAGE_ID, "time": now_ms, "messaging": [{
            "sender": {"id": MS_USER}, "recipient": {"id": MS_PAGE_ID}, "timestamp": now_ms,
            "message": {"mid": "m_TAP1", "text": "Morning", "quick_reply": {"payload": "slot_am"}},
        }]}],
    }  # fmt: skip
    assert post_webhook("messenger", json.dumps(payload).encode(), MS_SECRET).status_code == 200

    [tap] = stored_messages(ms_channel)
    assert (tap["type"], tap["text"], tap["reply"]["payload"]) == ("quick_reply", "Morning", "slot_am")
