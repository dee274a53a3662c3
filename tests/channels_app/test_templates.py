"""WhatsApp message templates against the local Graph API server: synced per WhatsApp Business Account
(cursor paging), listed with a preview, sent into a conversation with body and header variables; a
rejected or paused template is refused with its reason before any Graph call. A template is how an
agent reaches a contact whose customer-service window has closed."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from channels_app.models import MessageTemplate
from channels_app.services import templates
from conversations.models import Conversation, Message
from events.models import Event
from tests.channels_app.conftest import WA_WABA_ID, conversation_with, inbound_from

WA_USER = "972987654321"

ORDER_UPDATE = {
    "id": "1001",
    "name": "order_update",
    "language": "en_US",
    "category": "UTILITY",
    "status": "APPROVED",
    "parameter_format": "POSITIONAL",
    "components": [
        {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://scontent.example/h.jpg"]}},
        {"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped.", "example": {"body_text": [["Ana", "A42"]]}},
        {"type": "FOOTER", "text": "Acme Store"},
        {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Track it"}]},
    ],
}
WELCOME_BACK = {
    "id": "1002",
    "name": "welcome_back",
    "language": "en_US",
    "category": "MARKETING",
    "status": "APPROVED",
    "parameter_format": "NAMED",
    "components": [{"type": "BODY", "text": "Welcome back, {{first_name}}! Reply to pick up where we left off."}],
}
PROMO = {
    "id": "1003",
    "name": "promo_blast",
    "language": "en_US",
    "category": "MARKETING",
    "status": "REJECTED",
    "rejected_reason": "INVALID_FORMAT",
    "components": [{"type": "BODY", "text": "50% off everything!"}],
}
SPRING = {
    "id": "1004",
    "name": "spring_sale",
    "language": "es",
    "category": "MARKETING",
    "status": "PAUSED",
    "rejected_reason": "NONE",
    "components": [{"type": "BODY", "text": "Rebajas de primavera"}],
}
BACK_ONLINE = {
    "id": "1005",
    "name": "back_online",
    "language": "en_US",
    "category": "UTILITY",
    "status": "APPROVED",
    "components": [{"type": "BODY", "text": "We're back online. How can we help?"}],
}


@pytest.fixture
def meta_templates(graph) -> list[dict[str, Any]]:
    graph.templates[WA_WABA_ID] = [ORDER_UPDATE, WELCOME_BACK, PROMO, SPRING, BACK_ONLINE]
    return graph.templates[WA_WABA_ID]


@pytest.fixture
def synced(wa_channel, meta_templates) -> None:
    templates.templates_sync(channel=wa_channel)


def send(api: Any, conversation: Conversation, **body: Any) -> Any:
    url = f"/api/tenants/{conversation.tenant_id}/conversations/{conversation.pk}/template/"
    return api.post(url, body, format="json")


def test_sync_reads_every_page_of_the_business_accounts_templates(wa_channel, graph, meta_templates, tenant_api):
    response = tenant_api.post(f"/api/tenants/{wa_channel.tenant_id}/channels/{wa_channel.pk}/templates/sync/")

    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"], body["removed"]) == (5, 0, 0)
    pages = [r for r in graph.requests if r["path"] == f"/v25.0/{WA_WABA_ID}/message_templates"]
    assert len(pages) == 3  # two per page, cursor after=2, after=4
    order = MessageTemplate.objects.get(name="order_update")
    assert (order.language, order.category, order.status, order.meta_id) == ("en_US", "UTILITY", "APPROVED", "1001")
    assert order.components == ORDER_UPDATE["components"]
    assert MessageTemplate.objects.get(name="promo_blast").rejected_reason == "INVALID_FORMAT"
    assert MessageTemplate.objects.get(name="spring_sale").rejected_reason == ""  # Meta's "NONE"


def test_a_second_sync_follows_meta_status_changes_and_removals(wa_channel, graph, meta_templates):
    templates.templates_sync(channel=wa_channel)
    graph.templates[WA_WABA_ID] = [{**ORDER_UPDATE, "status": "PAUSED"}, WELCOME_BACK]

    result = templates.templates_sync(channel=wa_channel)

    assert result.as_dict() == {"created": 0, "updated": 2, "removed": 3, "total": 2}
    assert MessageTemplate.objects.get(name="order_update").status == "PAUSED"
    assert not MessageTemplate.objects.filter(name="promo_blast").exists()


def test_listing_shows_what_to_fill_and_a_preview(wa_channel, synced, tenant_api):
    response = tenant_api.get(f"/api/tenants/{wa_channel.tenant_id}/channels/{wa_channel.pk}/templates/")

    assert response.status_code == 200
    by_name = {t["name"]: t for t in response.json()}
    order = by_name["order_update"]
    assert order["variables"] == {"body": ["1", "2"], "header": "image"}
    assert order["preview"] == "[image]\n\nHi {{1}}, your order {{2}} has shipped.\n\nAcme Store\n\n[Track it]"
    assert order["sendable"] is True
    assert by_name["welcome_back"]["variables"] == {"body": ["first_name"]}
    assert by_name["promo_blast"]["sendable"] is False


def test_another_tenant_sees_and_syncs_none_of_these_templates(wa_channel, synced, api_for, other_tenant):
    theirs = api_for(other_tenant)
    base = f"/api/tenants/{other_tenant.pk}/channels/{wa_channel.pk}/templates/"
    assert theirs.get(base).status_code == 404
    assert theirs.post(base + "sync/").status_code == 404
    conversation = conversation_with(wa_channel, WA_USER)
    response = send(theirs, conversation, name="back_online", language="en_US")
    assert response.status_code in (403, 404)


def test_outside_the_window_the_reply_is_refused_and_the_template_goes(wa_channel, graph, synced, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=25)
    conversation = conversation_with(wa_channel, WA_USER)
    graph.requests.clear()

    refused = tenant_api.post(
        f"/api/tenants/{wa_channel.tenant_id}/conversations/{conversation.pk}/reply/", {"text": "Hi!"}, format="json"
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "outside_customer_service_window"
    assert graph.requests == []

    response = send(
        tenant_api,
        conversation,
        name="order_update",
        language="en_US",
        variables={"body": ["Ana", "A42"], "header": {"link": "https://cdn.example.com/parcel.jpg"}},
    )

    assert response.status_code == 201, response.content
    [post] = graph.posts()
    assert post["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": WA_USER,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/parcel.jpg"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "A42"}]},
            ],
        },
    }  # fmt: skip
    message = Message.objects.get(conversation=conversation)
    assert (message.kind, message.sender, message.status) == ("template", "agent", "sent")
    assert message.content.startswith("[image]\n\nHi Ana, your order A42 has shipped.")
    assert message.platform_message_id.startswith("wamid.OUT")
    conversation.refresh_from_db()
    assert conversation.state == "agent"


def test_a_template_an_agent_sends_stops_the_inboxs_waiting_time_like_a_reply(wa_channel, graph, synced, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=25)
    conversation = conversation_with(wa_channel, WA_USER)
    Conversation.objects.filter(pk=conversation.pk).update(state="handoff_requested", waiting_since=timezone.now())

    response = send(tenant_api, conversation, name="back_online", language="en_US")

    assert response.status_code == 201, response.content
    conversation.refresh_from_db()
    assert (conversation.state, conversation.waiting_since) == ("agent", None)
    message = Message.objects.get(conversation=conversation)
    [event] = Event.objects.filter(type="message.sent")
    assert event.payload == {
        "conversation_id": str(conversation.pk),
        "message_id": message.pk,
        "channel_id": str(wa_channel.pk),
        "platform": "whatsapp",
        "sender": "agent",
        "kind": "template",
        "platform_message_id": message.platform_message_id,
        "text": "We're back online. How can we help?",
    }


def test_named_variables_are_sent_with_their_names(wa_channel, graph, synced):
    template = MessageTemplate.objects.get(name="welcome_back")
    graph.requests.clear()

    _result, text = templates.send_template(
        channel=wa_channel, recipient_id=WA_USER, template=template, variables={"body": {"first_name": "Ana"}}
    )

    assert text == "Welcome back, Ana! Reply to pick up where we left off."
    body = graph.posts()[0]["json"]["template"]["components"]
    assert body == [{"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]}]


@pytest.mark.parametrize(
    ("name", "language", "reason"),
    [("promo_blast", "en_US", "INVALID_FORMAT"), ("spring_sale", "es", "paused by Meta")],
)
def test_rejected_and_paused_templates_are_refused_with_their_reason(
    wa_channel, graph, synced, tenant_api, name, language, reason
):
    conversation = conversation_with(wa_channel, WA_USER)
    graph.requests.clear()

    response = send(tenant_api, conversation, name=name, language=language)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "template_not_sendable"
    assert reason in error["message"]
    assert graph.requests == []
    assert not Message.objects.filter(conversation=conversation).exists()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"body": ["Ana"]}, "missing: ['2']"),
        ({"body": ["Ana", "A42"]}, "image header"),
        ({"body": ["Ana", "A42"], "header": {"link": "http://plain.example/x.jpg"}}, "https://"),
        ({"body": ["Ana", "A42", "extra"], "header": {"id": "777"}}, "unknown: ['3']"),
    ],
)
def test_wrong_variables_are_refused_before_sending(wa_channel, graph, synced, tenant_api, variables, expected):
    conversation = conversation_with(wa_channel, WA_USER)
    graph.requests.clear()

    response = send(tenant_api, conversation, name="order_update", language="en_US", variables=variables)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_variables"
    assert expected in response.json()["error"]["message"]
    assert graph.requests == []


def test_an_unknown_template_is_404_and_a_channel_without_a_waba_cannot_sync(wa_channel, synced, tenant_api):
    conversation = conversation_with(wa_channel, WA_USER)
    assert send(tenant_api, conversation, name="nope", language="en_US").status_code == 404

    wa_channel.config = {"display_phone_number": "15550001111"}
    wa_channel.save()
    response = tenant_api.post(f"/api/tenants/{wa_channel.tenant_id}/channels/{wa_channel.pk}/templates/sync/")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_account"


def test_the_admin_syncs_lists_and_previews_templates(wa_channel, meta_templates, client):
    from tenants.services import staff_user_create

    owner, _ = staff_user_create(tenant=wa_channel.tenant, username="owner", role="owner", password="pw-123456789")
    client.force_login(owner)

    response = client.post(
        "/admin/channels_app/channel/", {"action": "sync_templates", "_selected_action": [str(wa_channel.pk)]}
    )
    assert response.status_code == 302
    listing = client.get("/admin/channels_app/messagetemplate/").content.decode()
    assert "order_update" in listing and "REJECTED (INVALID_FORMAT)" in listing

    order = MessageTemplate.objects.get(name="order_update")
    page = client.get(f"/admin/channels_app/messagetemplate/{order.pk}/change/").content.decode()
    assert "Hi {{1}}, your order {{2}} has shipped." in page
    assert "[Track it]" in page


def template_update(event: str, name: str = "order_update", language: str = "en_US", reason: str = "NONE") -> bytes:
    import json

    value = {
        "event": event,
        "message_template_id": 1001,
        "message_template_name": name,
        "message_template_language": language,
        "reason": reason,
        "message_template_category": "UTILITY",
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WA_WABA_ID,
                "time": 1767225600,
                "changes": [{"field": "message_template_status_update", "value": value}],
            }
        ],
    }
    return json.dumps(body).encode()


def test_metas_status_webhook_pauses_and_reapproves_a_template_at_once(
    wa_channel, graph, synced, tenant_api, post_webhook
):
    from tests.channels_app.conftest import WA_SECRET

    inbound_from(wa_channel, WA_USER, hours_ago=30)
    conversation = conversation_with(wa_channel, WA_USER)
    graph.requests.clear()

    answer = post_webhook("whatsapp", template_update("PAUSED", reason="Low quality ratings"), WA_SECRET)
    assert answer.status_code == 200 and answer.json()["stored"] == 1
    refused = send(tenant_api, conversation, name="order_update", language="en_US",
                   variables={"body": ["Ana", "A42"], "header": {"id": "777"}})  # fmt: skip
    assert refused.status_code == 409
    assert "paused by Meta" in refused.json()["error"]["message"]
    assert "Low quality ratings" in refused.json()["error"]["message"]
    assert graph.requests == []

    post_webhook("whatsapp", template_update("APPROVED"), WA_SECRET)
    sent = send(tenant_api, conversation, name="order_update", language="en_US",
                variables={"body": ["Ana", "A42"], "header": {"id": "777"}})  # fmt: skip
    assert sent.status_code == 201
    assert MessageTemplate.objects.get(name="order_update").rejected_reason == ""


def test_a_status_webhook_signed_by_the_account_owner_is_not_lost_to_a_channel_claiming_its_waba(
    wa_channel, synced, post_webhook, other_tenant
):
    from datetime import timedelta

    from django.utils import timezone

    from channels_app import services
    from channels_app.models import Channel
    from tests.channels_app.conftest import WA_SECRET

    squatter = services.channel_create(
        tenant=other_tenant, type="whatsapp", name="Squat", external_id="5550001", config={"waba_id": WA_WABA_ID},
        credentials={"app_secret": "squatter-secret", "access_token": "EAAsquat"},
    )  # fmt: skip
    Channel.objects.filter(pk=squatter.pk).update(created_at=timezone.now() - timedelta(days=30))
    services.clear_route_cache()

    answer = post_webhook("whatsapp", template_update("REJECTED", reason="INCORRECT_CATEGORY"), WA_SECRET)

    assert answer.status_code == 200
    order = MessageTemplate.objects.get(channel=wa_channel, name="order_update")
    assert (order.status, order.rejected_reason) == ("REJECTED", "INCORRECT_CATEGORY")
    # Signed with the squatter's own secret, it would change none of our templates.
    post_webhook("whatsapp", template_update("APPROVED"), "squatter-secret")
    assert MessageTemplate.objects.get(channel=wa_channel, name="order_update").status == "REJECTED"
