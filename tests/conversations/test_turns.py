"""Full turns: a WhatsApp payload in, a reply at the local Graph API server, with a real worker."""

from __future__ import annotations

import threading
from decimal import Decimal

from channels_app.models import InboundEvent
from conversations.models import Contact, Conversation, Message
from events.models import Event
from tests.conftest import wait_until
from tests.conversations.conftest import deliver


def replies(graph):
    return graph.text_bodies()


def test_offline_answerer_says_plainly_it_found_nothing_and_what_it_is(live_worker, whatsapp, graph):
    wamid = deliver(whatsapp, text="What are your opening hours?")

    wait_until(lambda: replies(graph))
    text = replies(graph)[0]
    assert text.startswith("I couldn't find anything about that in Your Business's documents.")
    assert "no AI model is connected" in text
    assert 'If you would like to talk to a person, write "human".' in text
    # Read mark + typing indicator on the user's message first, then the reply.
    assert graph.requests[0]["body"] == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid,
        "typing_indicator": {"type": "text"},
    }
    sent = graph.texts[0]
    assert sent["path"].endswith(f"/{whatsapp.external_id}/messages")
    assert sent["body"]["to"] == "15551234567"
    assert sent["authorization"] == "Bearer EAAtest"
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert reply.platform_message_id.startswith("wamid.out")
    assert reply.payload["provider"] == "offline"
    user_message = Message.objects.get(sender="user")
    assert user_message.status == "processed"
    assert InboundEvent.objects.get().status == "processed"
    types = list(Event.objects.order_by("id").values_list("type", flat=True))
    assert types == ["conversation.created", "message.received", "message.sent"]


def test_retrieval_and_the_llm_do_not_wait_for_the_typing_indicator_the_reply_does(
    live_worker, whatsapp, graph, openai_server
):
    """Meta's round trip for the read mark + typing indicator is not added to the turn's: the LLM is
    asked while the indicator's call is still unanswered; the reply goes out once it is answered."""
    graph.hold_typing = threading.Event()
    wamid = deliver(whatsapp, text="Do you deliver on Sundays?")

    # Sent one after the other, the LLM request would wait for the held call (30 s).
    wait_until(lambda: openai_server.requests, timeout=10)
    typing = graph.requests[0]
    assert typing["body"]["message_id"] == wamid and "answered" not in typing
    assert graph.texts == []
    graph.hold_typing.set()

    wait_until(lambda: replies(graph))
    assert replies(graph) == ["LLM answer to: Do you deliver on Sundays?"]
    assert graph.texts[0]["arrived"] >= typing["answered"]
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert reply.timings["typing_wait_ms"] > 0  # the reply waited for the indicator


def test_llm_answer_records_tokens_and_cost_on_message_and_conversation(live_worker, whatsapp, graph, openai_server):
    deliver(whatsapp, text="Do you deliver on Sundays?")

    wait_until(lambda: replies(graph))
    assert replies(graph) == ["LLM answer to: Do you deliver on Sundays?"]
    request = openai_server.requests[0]
    assert request["_headers"]["authorization"] == "Bearer sk-test-deployment-key"
    assert request["messages"][0]["role"] == "system"
    assert "You are the assistant of Your Business" in request["messages"][0]["content"]
    assert request["messages"][-1] == {"role": "user", "content": "Do you deliver on Sundays?"}
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert (reply.prompt_tokens, reply.completion_tokens) == (100, 20)
    # gpt-4o-mini: 0.15 $/M in, 0.60 $/M out
    assert reply.cost_usd == Decimal("0.000027")
    conversation = Conversation.objects.get()
    assert (conversation.prompt_tokens, conversation.completion_tokens) == (100, 20)
    assert conversation.cost_usd == Decimal("0.000027")


def test_inactive_channel_records_the_message_and_says_why(live_worker, whatsapp, graph):
    whatsapp.is_active = False
    whatsapp.save()

    deliver(whatsapp, text="Hello?")

    event = wait_until(lambda: InboundEvent.objects.exclude(status="pending").first())
    assert event.status == "ignored"
    assert event.error == "channel is inactive: message recorded, not answered"
    message = Message.objects.get()
    assert (message.sender, message.content, message.status) == ("user", "Hello?", "stored")
    assert graph.texts == []


def test_llm_down_sends_fallback_marks_failed_and_retry_answers_later(
    live_worker, whatsapp, graph, openai_server, tenant_api, tenant
):
    openai_server.default = lambda body: {"status": 503}

    deliver(whatsapp, text="Where is my order?")

    wait_until(lambda: replies(graph))
    assert replies(graph) == [
        "Sorry, I can't answer right now because of a technical problem. Your message has been kept and "
        "we will get back to you."
    ]
    user_message = wait_until(lambda: Message.objects.filter(sender="user", status="failed").first())
    assert user_message.error == {
        "code": "llm_http_error",
        # The upstream body ("the model is overloaded") is the endpoint's to choose: never repeated.
        "message": "the LLM provider answered 503",
        "retryable": True,
    }
    failed = Event.objects.get(type="message.failed")
    assert failed.payload["message_ids"] == [user_message.pk]
    assert failed.payload["stage"] == "llm"
    assert InboundEvent.objects.get().status == "processed"

    # The provider is back: a retry answers the kept message.
    openai_server.default = lambda body: {"content": "Your order left this morning."}
    conversation = Conversation.objects.get()
    response = tenant_api.post(f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/retry/")
    assert response.status_code == 202
    assert response.json() == {"queued_messages": 1}
    wait_until(lambda: len(replies(graph)) == 2)
    assert replies(graph)[1] == "Your order left this morning."
    wait_until(lambda: Message.objects.get(pk=user_message.pk).status == "processed")


def test_redelivered_webhook_is_answered_once(live_worker, whatsapp, graph, openai_server):
    wamid = deliver(whatsapp, text="Is this answered once?")
    wait_until(lambda: replies(graph))
    deliver(whatsapp, text="Is this answered once?", wamid=wamid)
    deliver(whatsapp, text="And this?")
    wait_until(lambda: len(replies(graph)) == 2)

    assert replies(graph) == ["LLM answer to: Is this answered once?", "LLM answer to: And this?"]
    assert Message.objects.filter(sender="user").count() == 2


def test_a_contact_known_before_its_first_message_gets_its_conversation_not_a_twin(live_worker, whatsapp, graph):
    # An integrator (or a campaign) created the contact before they ever wrote.
    known = Contact.objects.create(
        tenant_id=whatsapp.tenant_id, channel=whatsapp, external_id="15551234567", profile_name="", language="es"
    )

    deliver(whatsapp, text="Hola, what are your opening hours?")

    wait_until(lambda: replies(graph))
    contact = Contact.objects.get(tenant_id=whatsapp.tenant_id, channel=whatsapp)
    assert contact.pk == known.pk
    assert contact.profile_name == "Alice" and contact.language == "es" and contact.last_seen_at is not None
    conversation = Conversation.objects.get(contact=contact)
    assert Message.objects.filter(conversation=conversation, sender="user").count() == 1
    created = Event.objects.get(type="conversation.created")
    assert created.payload == {
        "conversation_id": str(conversation.pk),
        "channel_id": str(whatsapp.pk),
        "contact_id": str(known.pk),
        "state": "bot",
    }
