"""The customer-service window, known before sending: WhatsApp 24 h since the contact's last message,
Messenger 24 h and a human agent's HUMAN_AGENT tag up to 7 days. Outside it nothing reaches the Graph
API: the API answers 409 outside_customer_service_window and the bot's send is refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from channels_app import services
from channels_app.models import Channel
from channels_app.services import window
from conversations.models import Contact, Conversation, Message
from tests.channels_app.conftest import MS_PAGE_ID, inbound_from

WA_USER = "972987654321"
MS_USER = "6944325612345678"


def conversation_with(channel: Channel, sender: str) -> Conversation:
    contact = Contact.objects.create(tenant_id=channel.tenant_id, channel=channel, external_id=sender)
    return Conversation.objects.create(
        tenant_id=channel.tenant_id, channel=channel, contact=contact, state="handoff_requested"
    )


def reply(api: Any, conversation: Conversation, text: str) -> Any:
    return api.post(
        f"/api/tenants/{conversation.tenant_id}/conversations/{conversation.pk}/reply/", {"text": text}, format="json"
    )


def test_an_agent_reply_25_hours_after_the_last_message_is_refused_without_a_graph_call(wa_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=25)
    conversation = conversation_with(wa_channel, WA_USER)

    response = reply(tenant_api, conversation, "Sorry for the wait!")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "outside_customer_service_window"
    assert "template" in error["message"]
    assert error["details"]["last_inbound_at"] and error["details"]["window_closed_at"]
    assert graph.requests == []
    assert not Message.objects.filter(conversation=conversation).exists()


def test_an_agent_reply_23_hours_after_the_last_message_is_sent(wa_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=23)
    conversation = conversation_with(wa_channel, WA_USER)

    response = reply(tenant_api, conversation, "Here you go.")

    assert response.status_code == 201
    [post] = graph.posts()
    assert post["json"]["to"] == WA_USER and post["json"]["text"]["body"] == "Here you go."


def test_the_bot_never_tries_outside_the_window(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=30)
    with pytest.raises(window.OutsideWindow) as refused:
        services.send_reply(channel=wa_channel, recipient_id=WA_USER, text="Anything else?")
    assert refused.value.code == "outside_customer_service_window"
    assert refused.value.permanent
    # A contact who never wrote cannot be reached free-form either.
    with pytest.raises(window.OutsideWindow):
        services.send_reply(channel=wa_channel, recipient_id="15550009999", text="Hi!")
    assert graph.requests == []


def test_the_latest_message_counts_and_only_on_this_tenants_channel(wa_channel, graph, other_tenant):
    inbound_from(wa_channel, WA_USER, hours_ago=40)
    inbound_from(wa_channel, WA_USER, hours_ago=2)
    services.send_reply(channel=wa_channel, recipient_id=WA_USER, text="Still here.")
    assert len(graph.posts()) == 1

    # The same person writing to another tenant's number opens no window here.
    theirs = services.channel_create(tenant=other_tenant, type="whatsapp", name="Globex", external_id="9988776655")
    inbound_from(theirs, "15557770000", hours_ago=1)
    with pytest.raises(window.OutsideWindow):
        services.send_reply(channel=wa_channel, recipient_id="15557770000", text="Hi")
    assert len(graph.posts()) == 1


def test_messenger_human_agent_tag_between_24_hours_and_7_days(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=72)

    with pytest.raises(window.OutsideWindow):  # the bot may not
        services.send_reply(channel=ms_channel, recipient_id=MS_USER, text="Bot follow-up")
    services.send_reply(channel=ms_channel, recipient_id=MS_USER, text="Ana here, following up.", human=True)

    [post] = graph.posts()
    assert post["path"] == f"/v25.0/{MS_PAGE_ID}/messages"
    assert post["json"] == {
        "recipient": {"id": MS_USER},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "Ana here, following up."},
    }


def test_messenger_human_reply_after_7_days_is_refused(ms_channel, graph, tenant_api):
    inbound_from(ms_channel, MS_USER, hours_ago=24 * 7 + 1)
    conversation = conversation_with(ms_channel, MS_USER)

    response = reply(tenant_api, conversation, "Hello again")

    assert response.status_code == 409
    assert graph.requests == []


def test_messenger_inside_24_hours_is_a_plain_response(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=3)
    services.send_reply(channel=ms_channel, recipient_id=MS_USER, text="Yes", human=True)
    assert graph.posts()[0]["json"]["messaging_type"] == "RESPONSE"


def test_send_typing_for_a_conversation_marks_the_latest_message_read_with_the_indicator(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=2, message_id="wamid.OLD")
    inbound_from(wa_channel, WA_USER, hours_ago=1, message_id="wamid.LATEST")
    conversation = conversation_with(wa_channel, WA_USER)

    assert services.send_typing(conversation)

    [post] = graph.posts()
    assert post["json"] == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.LATEST",
        "typing_indicator": {"type": "text"},
    }


def test_send_typing_for_a_messenger_conversation_sends_typing_on(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=1)
    assert services.send_typing(conversation_with(ms_channel, MS_USER))
    actions = [p["json"]["sender_action"] for p in graph.posts()]
    assert actions == ["mark_seen", "typing_on"]


def test_send_typing_sends_nothing_once_the_window_has_closed(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=26)
    assert not services.send_typing(conversation_with(wa_channel, WA_USER))
    assert graph.requests == []


def test_the_message_a_turn_answers_holds_the_window_open_and_an_old_one_does_not(wa_channel, graph):
    # The turn knows when the contact wrote the message it answers: within 24 hours it goes out...
    services.send_reply(
        channel=wa_channel, recipient_id=WA_USER, text="Right away.", wrote_at=timezone.now() - timedelta(hours=23)
    )
    assert len(graph.posts()) == 1
    # ...a message written 25 hours ago (a turn retried that late) goes nowhere unless a later one opened it.
    with pytest.raises(window.OutsideWindow):
        services.send_reply(
            channel=wa_channel, recipient_id=WA_USER, text="Sorry!", wrote_at=timezone.now() - timedelta(hours=25)
        )
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    services.send_reply(
        channel=wa_channel, recipient_id=WA_USER, text="Sorry!", wrote_at=timezone.now() - timedelta(hours=25)
    )
    assert len(graph.posts()) == 2
