"""Function calling and human handoff in full turns (WhatsApp in, Graph API out, real openai client)."""

from __future__ import annotations

import hashlib
import hmac
import json

from conversations import services
from conversations.models import Conversation, Message
from events.models import Event
from tenants.services import tenant_update
from tests.conftest import wait_until
from tests.conversations.conftest import deliver
from tests.conversations.servers import FunctionEndpoint, function_handler

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "pattern": "^[A-Z][0-9]+$"}},
    "required": ["order_id"],
    "additionalProperties": False,
}


def make_function(tenant, url, *, timeout=5.0):
    return services.function_create(
        tenant=tenant,
        name="get_order_status",
        description="Status of an order by its id",
        parameters=ORDER_SCHEMA,
        endpoint_url=url,
        timeout_seconds=timeout,
    )


def tool_messages(body):
    return [m for m in body["messages"] if m["role"] == "tool"]


def test_tool_call_round_trip_is_signed_validated_stored_and_answered(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint(answer={"status": "shipped", "eta": "tomorrow"})
    server = local_http_server(function_handler(endpoint))
    created = make_function(tenant, server.url + "/orders")
    openai_server.replies = [{"tool_calls": [("get_order_status", '{"order_id": "A42"}')]}]
    openai_server.default = lambda body: {"content": "Order A42 has shipped; it arrives tomorrow."}

    deliver(whatsapp, text="Where is order A42?")

    wait_until(lambda: graph.texts)
    assert graph.text_bodies() == ["Order A42 has shipped; it arrives tomorrow."]
    first, second = openai_server.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["get_order_status", "search_knowledge", "request_human"]
    assert json.loads(tool_messages(second)[0]["content"]) == {"status": "shipped", "eta": "tomorrow"}
    # The endpoint got a signed request that an independent HMAC check accepts.
    call = endpoint.calls[0]
    timestamp, signature = (part.split("=", 1)[1] for part in call["headers"]["x-metachat-signature"].split(","))
    expected = hmac.new(
        created.signing_secret.encode(), f"{timestamp}.".encode() + call["raw"], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert json.loads(call["raw"])["arguments"] == {"order_id": "A42"}
    tool = wait_until(lambda: Message.objects.filter(sender="tool").first())
    assert tool.payload["ok"] is True
    assert tool.payload["arguments"] == {"order_id": "A42"}
    assert tool.payload["result"] == {"status": "shipped", "eta": "tomorrow"}
    event = wait_until(lambda: Event.objects.filter(type="tool.called").first())
    assert (event.payload["name"], event.payload["ok"], event.payload["status_code"]) == ("get_order_status", True, 200)
    reply = wait_until(lambda: Message.objects.filter(sender="assistant", status="sent").first())
    assert (reply.prompt_tokens, reply.completion_tokens) == (200, 40)  # both rounds counted


def test_invalid_tool_arguments_are_refused_before_the_call_and_explained_to_the_model(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint()
    server = local_http_server(function_handler(endpoint))
    make_function(tenant, server.url + "/orders")
    openai_server.replies = [{"tool_calls": [("get_order_status", '{"order_id": 42}')]}]
    openai_server.default = lambda body: {"content": "Could you give me the order number (like A42)?"}

    deliver(whatsapp, text="Where is my order 42?")

    wait_until(lambda: graph.texts)
    assert endpoint.calls == []
    result = json.loads(tool_messages(openai_server.requests[1])[0]["content"])
    assert result == {"error": "arguments do not match the schema at order_id: 42 is not of type 'string'"}
    tool = wait_until(lambda: Message.objects.filter(sender="tool").first())
    assert tool.payload["ok"] is False
    assert tool.error == {"message": "arguments do not match the schema at order_id: 42 is not of type 'string'"}
    assert graph.text_bodies() == ["Could you give me the order number (like A42)?"]


def test_tool_endpoint_timeout_is_reported_to_the_model_and_recorded(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint(delay=2.0)
    server = local_http_server(function_handler(endpoint))
    make_function(tenant, server.url + "/orders", timeout=0.3)
    openai_server.replies = [{"tool_calls": [("get_order_status", '{"order_id": "B7"}')]}]
    openai_server.default = lambda body: {"content": "The order system is slow right now, sorry."}

    deliver(whatsapp, text="Status of B7?")

    wait_until(lambda: graph.texts)
    result = json.loads(tool_messages(openai_server.requests[1])[0]["content"])
    assert result == {"error": "the function endpoint did not answer within 0.3 s"}
    event = wait_until(lambda: Event.objects.filter(type="tool.called").first())
    assert event.payload["ok"] is False
    assert event.payload["error"] == "the function endpoint did not answer within 0.3 s"


def test_handoff_keyword_escalates_tells_user_and_silences_the_bot(live_worker, whatsapp, graph, openai_server):
    deliver(whatsapp, text="I want to talk to a HUMAN please")

    wait_until(lambda: graph.texts)
    assert graph.text_bodies() == [
        "I'm passing you to a member of our team. Someone will reply here as soon as possible."
    ]
    assert openai_server.requests == []
    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    assert conversation.handoff_reason == "keyword: human"
    handoff = Event.objects.get(type="human_handoff.requested")
    assert handoff.payload["reason"] == "keyword: human"
    assert handoff.payload["previous_state"] == "bot"

    deliver(whatsapp, text="hello? anyone?")
    wait_until(lambda: Message.objects.filter(content="hello? anyone?", status="processed").exists())
    assert len(graph.texts) == 1
    assert openai_server.requests == []


def test_handoff_keyword_is_accent_and_case_insensitive_whole_word(live_worker, whatsapp, graph, openai_server, tenant):
    tenant_update(tenant=tenant, settings={"humanHandoffKeywords": ["humano"], "locale": ["es"]})

    deliver(whatsapp, text="Es muy humanoide")  # not the whole word: the bot answers
    wait_until(lambda: graph.texts)
    deliver(whatsapp, text="¡Quiero un HUMÁNO!")
    wait_until(lambda: len(graph.texts) == 2)

    assert graph.text_bodies() == [
        "LLM answer to: Es muy humanoide",
        "Te paso con una persona de nuestro equipo. Alguien te responderá aquí lo antes posible.",
    ]
    assert wait_until(lambda: Conversation.objects.get().handoff_reason) == "keyword: humano"


def test_handoff_by_tool_then_agent_reply_then_return_to_bot_with_fresh_context(
    live_worker, whatsapp, graph, openai_server, tenant, tenant_api
):
    openai_server.replies = [{"tool_calls": [("request_human", '{"reason": "refund dispute"}')]}]

    deliver(whatsapp, text="This is the third time I ask for my refund!")

    wait_until(lambda: graph.texts)
    assert graph.text_bodies() == [
        "I'm passing you to a member of our team. Someone will reply here as soon as possible."
    ]
    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    assert conversation.handoff_reason == "tool: request_human (refund dispute)"
    tool = Message.objects.get(sender="tool")
    assert tool.payload["name"] == "request_human"

    base = f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}"
    response = tenant_api.post(base + "/reply/", {"text": "Hi, I'm Sam. Your refund is on its way."}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["sender"] == "agent"
    assert response.json()["status"] == "sent"
    assert graph.text_bodies()[-1] == "Hi, I'm Sam. Your refund is on its way."
    conversation.refresh_from_db()
    assert conversation.state == "agent"

    response = tenant_api.post(base + "/return-to-bot/")
    assert response.status_code == 200
    assert response.json()["state"] == "bot"
    openai_server.default = lambda body: {"content": "You're welcome!"}

    deliver(whatsapp, text="Thanks")
    wait_until(lambda: len(graph.texts) == 3)
    assert graph.text_bodies()[-1] == "You're welcome!"
    # The resumed bot sees only what was said after the handoff boundary.
    assert openai_server.requests[-1]["messages"][1:] == [{"role": "user", "content": "Thanks"}]
    states = [e.payload["state"] for e in Event.objects.filter(type="conversation.updated").order_by("id")]
    assert states == ["handoff_requested", "agent", "bot"]


def test_resolve_then_user_writes_again_and_the_bot_answers(live_worker, whatsapp, graph, openai_server, tenant):
    deliver(whatsapp, text="agent please")
    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    services.conversation_resolve(tenant=tenant, conversation=conversation)

    deliver(whatsapp, text="New question: do you open on Monday?")

    wait_until(lambda: len(graph.texts) == 2)
    assert graph.text_bodies()[-1] == "LLM answer to: New question: do you open on Monday?"
    conversation.refresh_from_db()
    assert conversation.state == "bot"
    assert openai_server.requests[-1]["messages"][1:] == [
        {"role": "user", "content": "New question: do you open on Monday?"}
    ]


def test_agent_replies_from_the_admin_inbox_through_the_channel(live_worker, whatsapp, graph, client, tenant):
    from tenants.services import staff_user_create

    deliver(whatsapp, text="I need help")  # a handoff keyword by default
    conversation = wait_until(lambda: Conversation.objects.filter(state="handoff_requested").first())
    user, _ = staff_user_create(tenant=tenant, username="agent-amy", role="agent", password="pw-amy-123456")
    client.force_login(user)

    response = client.post(
        f"/admin/conversations/conversation/{conversation.pk}/reply/", {"text": "Amy here, how can I help?"}
    )

    assert response.status_code == 302
    assert graph.text_bodies()[-1] == "Amy here, how can I help?"
    message = Message.objects.get(sender="agent")
    assert (message.status, message.agent_user_id) == ("sent", user.pk)
    assert message.platform_message_id.startswith("wamid.out")
    conversation.refresh_from_db()
    assert conversation.state == "agent"
    page = client.get(f"/admin/conversations/conversation/{conversation.pk}/change/").content.decode()
    assert "Amy here, how can I help?" in page
    assert "I need help" in page
