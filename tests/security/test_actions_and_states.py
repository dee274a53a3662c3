"""Findings 10 and 16 of issue #20: action URLs accept only POST (and the schema shows only that), and
conversations move only along the explicit state table (anything else: 409 ``invalid_transition``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from channels_app.models import Channel
from conversations.models import Contact, Conversation, TenantFunction
from events import delivery
from events import services as event_services
from events.models import Event, WebhookDelivery
from events.services import emit
from events.types import EventType
from knowledge.models import Document

ACTION_SEGMENTS = (
    "reindex", "rotate-secret", "replay", "reply", "resolve", "return-to-bot", "handoff", "retry",
    "start", "pause", "resume", "stop", "promote",  # campaigns and A/B tests
)  # fmt: skip


@pytest.fixture
def targets(tenant: Any, tenant_api: Any, settings: Any) -> dict[str, Any]:
    """A document, a function, a webhook endpoint and one of its deliveries, made as the tenant would."""
    base = f"/api/tenants/{tenant.pk}"
    uploaded = tenant_api.post(
        f"{base}/documents/", {"file": SimpleUploadedFile("faq.txt", b"Returns within 30 days.")}, format="multipart"
    )
    function = tenant_api.post(
        f"{base}/functions/",
        {
            "name": "order_status",
            "description": "Order status",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            "endpoint_url": "https://orders.example.com/status",
            "timeout_seconds": 5,
        },
        format="json",
    )
    assert (uploaded.status_code, function.status_code) == (201, 201), (uploaded.content, function.content)
    endpoint = event_services.webhook_endpoint_create(
        tenant=tenant, url="https://hooks.example.com/in", event_types=["message.sent"]
    ).endpoint
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    delivery.dispatch_pending_events(now=timezone.now())
    row = WebhookDelivery.objects.get(endpoint=endpoint)
    hook = f"{base}/webhooks/{endpoint.pk}"
    return {
        "document": Document.objects.get(pk=uploaded.json()["id"]),
        "function": TenantFunction.objects.get(pk=function.json()["id"]),
        "endpoint": endpoint,
        "urls": {
            "reindex": f"{base}/documents/{uploaded.json()['id']}/reindex/",
            "function rotate-secret": f"{base}/functions/{function.json()['id']}/rotate-secret/",
            "webhook rotate-secret": f"{hook}/rotate-secret/",
            "webhook replay": f"{hook}/replay/",
            "delivery replay": f"{hook}/deliveries/{row.pk}/replay/",
        },
    }


@pytest.mark.parametrize(
    "action", ["reindex", "function rotate-secret", "webhook rotate-secret", "webhook replay", "delivery replay"]
)
@pytest.mark.parametrize("method", ["get", "patch", "put", "delete"])
def test_stray_methods_on_action_urls_answer_405_and_change_nothing(tenant_api, targets, action, method):
    document, function, endpoint = targets["document"], targets["function"], targets["endpoint"]

    response = getattr(tenant_api, method)(targets["urls"][action], {"is_active": False}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    document.refresh_from_db()  # each still there (a DELETE went through before), unchanged
    function.refresh_from_db()
    endpoint.refresh_from_db()
    assert (function.is_active, endpoint.is_active, endpoint.secret_rotated_at) == (True, True, None)
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 1


def test_the_schema_lists_only_post_for_action_urls(client):
    schema = client.get("/api/schema/?format=json").json()

    actions = {
        path: sorted(methods) for path, methods in schema["paths"].items() if path.rstrip("/").endswith(ACTION_SEGMENTS)
    }

    assert len(actions) == 16
    assert {path: ["post"] for path in actions} == actions


# --- the conversation state machine ------------------------------------------------------------------


@pytest.fixture
def conversation_in(tenant: Any) -> Any:
    def make(state: str) -> Conversation:
        channel = Channel.objects.create(tenant=tenant, type="whatsapp", name=f"{state} line")
        contact = Contact.objects.create(tenant=tenant, channel=channel, external_id=f"ext-{state}")
        return Conversation.objects.create(tenant=tenant, channel=channel, contact=contact, state=state)

    return make


def test_an_allowed_move_goes_through_the_api(tenant, tenant_api, conversation_in):
    conversation = conversation_in("bot")
    base = f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}"

    escalated = tenant_api.post(f"{base}/handoff/")
    resolved = tenant_api.post(f"{base}/resolve/")
    reopened = tenant_api.post(f"{base}/return-to-bot/")

    assert [r.status_code for r in (escalated, resolved, reopened)] == [200, 200, 200]
    assert [r.json()["state"] for r in (escalated, resolved, reopened)] == ["handoff_requested", "resolved", "bot"]
    assert Event.objects.filter(type="human_handoff.requested").count() == 1


@pytest.mark.parametrize(
    ("state", "allowed"), [("resolved", ["agent", "bot"]), ("agent", ["bot", "resolved"])], ids=["resolved", "agent"]
)
def test_asking_for_a_human_on_a_closed_or_human_owned_conversation_answers_409(
    tenant, tenant_api, conversation_in, state, allowed
):
    conversation = conversation_in(state)
    events_before = Event.objects.count()

    response = tenant_api.post(f"/api/tenants/{tenant.pk}/conversations/{conversation.pk}/handoff/")

    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "invalid_transition",
        "message": f"a conversation in state '{state}' cannot go to 'handoff_requested'",
        "details": {"state": state, "allowed": allowed},
    }
    conversation.refresh_from_db()
    assert conversation.state == state
    assert Event.objects.count() == events_before


def test_a_turn_asking_for_a_human_after_an_agent_took_over_stays_silent(tenant, conversation_in):
    """The turn read the conversation while the bot owned it; an agent replied before its keyword
    escalated: the refused move silences the bot instead of failing the turn."""
    from conversations.pipeline import handoff_check
    from conversations.pipeline.turn import Turn

    conversation = conversation_in("agent")
    stale = Conversation.objects.get(pk=conversation.pk)
    stale.state = "bot"
    turn = Turn(tenant=tenant, channel=conversation.channel, sender_external_id="ext-agent", conversation=stale)
    turn.reply_text = "draft"

    handoff_check.escalate(turn, reason="keyword: human")

    assert turn.silent_reason == "no handoff: a conversation in state 'agent' cannot go to 'handoff_requested'"
    assert (turn.handoff_reason, turn.reply_text, turn.answering) == ("", "", False)
    conversation.refresh_from_db()
    assert conversation.state == "agent"
    assert not Event.objects.filter(type="human_handoff.requested").exists()
