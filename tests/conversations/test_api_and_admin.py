"""The conversations API (isolation, filters, transcript, actions), tenant functions, the agent inbox."""

from __future__ import annotations

import pytest

from channels_app.models import Channel
from conversations.models import Contact, Conversation, Message
from events.models import Event
from tenants.services import staff_user_create


@pytest.fixture
def conversation_of(db):
    def make(tenant, *, state="bot", name="Alice", channel_type="whatsapp"):
        channel = Channel.objects.create(tenant=tenant, type=channel_type, name=f"{name} line")
        contact = Contact.objects.create(tenant=tenant, channel=channel, external_id=f"ext-{name}", profile_name=name)
        return Conversation.objects.create(tenant=tenant, channel=channel, contact=contact, state=state)

    return make


def test_list_puts_waiting_conversations_first_and_filters_by_state_and_channel(tenant, tenant_api, conversation_of):
    bot = conversation_of(tenant, name="Bob")
    waiting = conversation_of(tenant, name="Wendy", state="handoff_requested")
    agent = conversation_of(tenant, name="Ann", state="agent")

    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/")
    assert response.status_code == 200
    assert [c["id"] for c in response.json()["results"]] == [str(waiting.pk), str(agent.pk), str(bot.pk)]

    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/?state=handoff_requested")
    assert [c["contact"]["profile_name"] for c in response.json()["results"]] == ["Wendy"]
    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/?channel={bot.channel_id}")
    assert [c["id"] for c in response.json()["results"]] == [str(bot.pk)]
    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/?state=sleeping")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"state": ["one of bot, handoff_requested, agent, resolved"]}
    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/?since=yesterday")
    assert response.status_code == 400


def test_another_tenants_conversation_answers_404(tenant, other_tenant, api_for, conversation_of):
    theirs = conversation_of(other_tenant, name="Eve")
    client = api_for(tenant)

    assert client.get(f"/api/tenants/{tenant.pk}/conversations/{theirs.pk}/").status_code == 404
    assert client.get(f"/api/tenants/{tenant.pk}/conversations/{theirs.pk}/messages/").status_code == 404
    assert client.post(f"/api/tenants/{tenant.pk}/conversations/{theirs.pk}/resolve/").status_code == 404
    assert client.get(f"/api/tenants/{other_tenant.pk}/conversations/").status_code == 404
    assert client.get(f"/api/tenants/{tenant.pk}/conversations/").json()["results"] == []


def test_transcript_includes_sources_and_tool_calls(tenant, tenant_api, conversation_of):
    conversation = conversation_of(tenant)
    common = {"tenant": tenant, "conversation": conversation, "channel": conversation.channel}
    Message.objects.create(**common, direction="in", sender="user", content="Return policy?")
    Message.objects.create(
        **common, direction="out", sender="tool", kind="tool_call", content="search_knowledge", status="stored",
        payload={"name": "search_knowledge", "arguments": {"query": "returns"}, "ok": True, "error": "",
                 "result": {"passages": []}, "status_code": None, "duration_ms": 3},
    )  # fmt: skip
    Message.objects.create(
        **common, direction="out", sender="assistant", content="30 days [1]", status="sent",
        payload={"sources": [{"marker": 1, "title": "Policies", "page": 2}]},
    )  # fmt: skip

    response = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/messages/")

    results = response.json()["results"]
    assert [m["sender"] for m in results] == ["user", "tool", "assistant"]
    assert results[1]["tool_call"]["name"] == "search_knowledge"
    assert results[1]["tool_call"]["arguments"] == {"query": "returns"}
    assert results[2]["sources"] == [{"marker": 1, "title": "Policies", "page": 2}]


def test_invalid_transitions_answer_409(tenant, tenant_api, conversation_of):
    conversation = conversation_of(tenant, state="resolved")
    response = tenant_api.post(f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/resolve/")
    assert response.status_code == 200  # already resolved: no-op
    response = tenant_api.post(f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/retry/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing_to_retry"


def test_agent_reply_that_the_channel_refuses_is_kept_failed_with_the_reason(tenant, tenant_api, conversation_of):
    conversation = conversation_of(tenant, state="handoff_requested")
    Channel.objects.filter(pk=conversation.channel_id).update(sending_disabled_reason="token expired (190)")

    response = tenant_api.post(
        f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/reply/", {"text": "Hello"}, format="json"
    )

    assert response.status_code == 502
    message = Message.objects.get(sender="agent")
    assert message.status == "failed"
    assert message.error == {"stage": "send", "message": "sending is disabled for this channel: token expired (190)"}
    assert response.json()["error"]["details"]["message_id"] == message.pk
    assert Event.objects.filter(type="message.failed").count() == 1


def test_functions_api_validates_schema_and_endpoint_and_shows_the_secret_once(tenant, tenant_api, settings):
    base = f"/api/tenants/{tenant.pk}/functions/"
    good = {
        "name": "get_order_status",
        "description": "Order status",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        "endpoint_url": "https://orders.example.com/status",
        "timeout_seconds": 5,
    }
    response = tenant_api.post(base, good, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["signing_secret"].startswith("whsec_")
    function_id = response.json()["id"]
    assert "signing_secret" not in tenant_api.get(f"{base}{function_id}/").json()

    bad = {**good, "name": "x2", "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}}}
    response = tenant_api.post(base, bad, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["parameters"][0].startswith("not a valid JSON schema")

    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    response = tenant_api.post(
        base, {**good, "name": "plain", "endpoint_url": "http://orders.example.com/"}, format="json"
    )
    assert response.json()["error"]["details"] == {"endpoint_url": ["the endpoint must use https"]}
    response = tenant_api.post(base, {**good, "name": "search_knowledge"}, format="json")
    assert response.json()["error"]["details"] == {"name": ["'search_knowledge' is a built-in tool"]}

    response = tenant_api.patch(f"{base}{function_id}/", {"is_active": False}, format="json")
    assert response.json()["is_active"] is False
    assert tenant_api.delete(f"{base}{function_id}/").status_code == 204
    assert tenant_api.get(base).json()["results"] == []


def test_usage_sums_tokens_and_cost_per_tenant(tenant, other_tenant, tenant_api, conversation_of):
    mine, theirs = conversation_of(tenant), conversation_of(other_tenant, name="Eve")
    for conversation, cost in ((mine, "0.000027"), (mine, "0.000010"), (theirs, "5")):
        Message.objects.create(
            tenant_id=conversation.tenant_id, conversation=conversation, channel=conversation.channel,
            direction="out", sender="assistant", prompt_tokens=100, completion_tokens=20, cost_usd=cost,
        )  # fmt: skip

    body = tenant_api.get(f"/api/tenants/{tenant.pk}/conversations/usage/").json()

    assert body == {"prompt_tokens": 200, "completion_tokens": 40, "cost_usd": "0.000037", "conversations": 1}


def test_agent_inbox_lists_waiting_first_shows_transcript_and_resolves(client, tenant, other_tenant, conversation_of):
    bot = conversation_of(tenant, name="Bob Botline")
    waiting = conversation_of(tenant, name="Wendy Waiting", state="handoff_requested")
    foreign = conversation_of(other_tenant, name="Foreign Frieda", state="handoff_requested")
    Message.objects.create(
        tenant=tenant, conversation=waiting, channel=waiting.channel, direction="out", sender="assistant",
        content="See our policy", payload={"sources": [{"title": "Policies", "page": 4}]},
    )  # fmt: skip
    user, _ = staff_user_create(tenant=tenant, username="sam", role="agent", password="pw-sam-123456")
    client.force_login(user)

    page = client.get("/admin/conversations/conversation/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index("Wendy Waiting") < html.index("Bob Botline")
    assert "Foreign Frieda" not in html  # neither the conversation nor its channel in the filter

    detail = client.get(f"/admin/conversations/conversation/{waiting.pk}/change/")
    assert detail.status_code == 200
    assert "See our policy" in detail.content.decode()
    assert "Policies (p. 4)" in detail.content.decode()
    assert client.get(f"/admin/conversations/conversation/{foreign.pk}/change/").status_code == 404

    response = client.post(f"/admin/conversations/conversation/{waiting.pk}/resolve/")
    assert response.status_code == 302
    waiting.refresh_from_db()
    assert waiting.state == "resolved"
    assert client.post(f"/admin/conversations/conversation/{foreign.pk}/resolve/").status_code == 404
    bot.refresh_from_db()
    assert bot.state == "bot"


def test_owner_adds_a_function_in_the_admin_and_sees_the_signing_secret_once(client, tenant):
    from django.contrib.messages import get_messages

    from conversations.models import TenantFunction

    owner, _ = staff_user_create(tenant=tenant, username="olga", role="owner", password="pw-olga-123456")
    client.force_login(owner)

    response = client.post(
        "/admin/conversations/tenantfunction/add/",
        {
            "name": "book_table",
            "description": "Book a table",
            "parameters": '{"type": "object", "properties": {"people": {"type": "integer"}}}',
            "endpoint_url": "https://bookings.example.com/tables",
            "timeout_seconds": "5",
            "auth_header_name": "",
            "auth_secret_name": "",
            "is_active": "on",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    function = TenantFunction.objects.get(tenant=tenant, name="book_table")
    assert function.signing_secret_name == "function.book_table.signing"
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert any(
        n.startswith("Signing secret for book_table (copy it now, it is not shown again): whsec_") for n in notes
    )

    response = client.post(
        "/admin/conversations/tenantfunction/add/",
        {"name": "bad", "description": "x", "parameters": '{"type": "array"}', "endpoint_url": "ftp://x",
         "timeout_seconds": "5"},
    )  # fmt: skip
    assert response.status_code == 200
    page = response.content.decode()
    assert "the top-level schema must have type &#x27;object&#x27;" in page
    assert "the endpoint must use https" in page
