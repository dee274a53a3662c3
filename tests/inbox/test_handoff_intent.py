"""Handoff keywords by intent: a request for a person hands off, the word inside a question does not;
and the visitor is told once."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from channels_app.models import Channel
from conversations import handoff
from conversations.models import Conversation, Message
from tests.conftest import wait_until
from tests.conversations.conftest import deliver, webchat_say
from tests.conversations.test_streaming_and_grounding import collect

DEFAULT = ["human", "agent", "help"]  # the tenant default (tenants.settings_schema)


@pytest.mark.parametrize(
    "text",
    [
        "help",
        "Help!",
        "human please",
        "HUMAN PLEASE",
        "I want to talk to an agent",
        "operator",
        "I need help",
        "Can I speak to an agent about my refund?",
        "put me through to a real person",
        "hello\nhuman please",  # a burst: the second message asks
        "¡Quiero un humano ya!",
        "Je veux parler à un conseiller",
        "Quero falar com um atendente",
        "Ich möchte mit einem Menschen sprechen",
    ],
)
def test_a_request_for_a_person_hands_off_with_the_default_keywords(text):
    assert handoff.requested_handoff(text, DEFAULT)


@pytest.mark.parametrize(
    "text",
    [
        "Can you help me find gluten-free bread?",
        "Does this bread help digestion?",
        "I need help with my order",
        "Is there a travel agent near the store?",
        "Which agent handles shipping?",
        "Who is the operator of this store?",
        "that was helpful",
        "",
    ],
)
def test_the_word_inside_an_ordinary_question_does_not_hand_off(text):
    assert handoff.requested_handoff(text, DEFAULT) is None


def test_tenant_keywords_still_count_and_whole_words_only():
    assert handoff.requested_handoff("Atendimento por favor", ["atendimento"]) == "atendimento"
    assert handoff.requested_handoff("Es muy humanoide", ["humano"]) is None
    assert handoff.requested_handoff("manager please", ["manager"]) == "manager"
    assert handoff.requested_handoff("manager please", []) is None


def test_an_ordinary_question_with_help_reaches_the_bot(live_worker, whatsapp, graph, openai_server):
    deliver(whatsapp, text="Can you help me find gluten-free bread?")

    wait_until(lambda: graph.texts)
    assert graph.text_bodies() == ["LLM answer to: Can you help me find gluten-free bread?"]
    assert Conversation.objects.get().state == "bot"


def test_operator_hands_off_with_the_tenant_default(live_worker, whatsapp, graph, openai_server):
    deliver(whatsapp, text="operator")

    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    assert conversation.handoff_reason == "keyword: operator"
    assert openai_server.requests == []


def test_the_web_chat_visitor_gets_the_handoff_notice_once(live_worker, tenant, openai_server):
    from channels_app.adapters.webchat import WebchatAdapter, visitor_group

    channel = Channel.objects.create(tenant=tenant, type="webchat", name="Site", external_id=f"wk_{uuid.uuid4().hex}")
    visitor = f"v_{uuid.uuid4().hex}"
    layer = get_channel_layer()
    inbox = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(visitor_group(channel_external_id=channel.external_id, visitor_id=visitor), inbox)

    webchat_say(channel, visitor, "human please")
    wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").exists())
    # Everything the turn pushed is in the layer now; a marker closes the list.
    WebchatAdapter().send_notice(
        channel_external_id=channel.external_id, recipient_id=visitor, kind="marker", data={}, credentials={}
    )
    frames = collect(inbox, "marker")

    notice = handoff.notice_text("en")
    shown = [f for f in frames if notice in (f.get("text") or "") or notice in (f.get("message") or "")]
    assert len(shown) == 1, frames
    assert [f["type"] for f in frames if f["type"] == "handoff"] == []
