"""The customer-service window in the inbox (issue 16): the conversation says whether the contact's
window is open; a reply outside it is refused before anything is stored or sent (409
``outside_customer_service_window``); the composer offers the channel's approved templates instead, and
one sent with its variables reaches the local Graph API server, shows in the conversation (live) and
moves it to the agent. Another tenant's conversation or template is refused on every endpoint."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone

from channels_app.models import Channel, MessageTemplate
from channels_app.secrets import channel_secret_set
from conversations.inbox import live, services
from conversations.models import Conversation, Message
from tests.channels_app.conftest import inbound_from
from tests.channels_app.test_templates import ORDER_UPDATE, PROMO, SPRING, WELCOME_BACK
from tests.conversations.conftest import make_whatsapp
from tests.inbox.conftest import client_for, make_conversation
from tests.inbox.test_inbox_whatsapp import frames_until

pytestmark = pytest.mark.django_db

CONTACT = "15557654321"


def add_templates(channel: Channel, *items: dict[str, Any]) -> None:
    """Meta's templates (as tests/channels_app/test_templates.py has them) as a sync stores them."""
    for item in items:
        fields = {key: value for key, value in item.items() if key != "id"}
        MessageTemplate.objects.create(
            tenant_id=channel.tenant_id, channel=channel, waba_id="2233445566778", synced_at=timezone.now(),
            meta_id=item.get("id", ""), **fields,
        )  # fmt: skip


def get(client: Client, path: str, tenant) -> Any:
    return client.get(f"/inbox/api/{path}?tenant={tenant.pk}")


def post(client: Client, path: str, tenant, body: dict | None = None) -> Any:
    return client.post(
        f"/inbox/api/{path}?tenant={tenant.pk}", data=json.dumps(body or {}), content_type="application/json"
    )


def closed_conversation(tenant, channel: Channel, **fields: Any) -> Conversation:
    """A WhatsApp contact whose last message was 25 hours ago: the window closed an hour ago."""
    inbound_from(channel, CONTACT, hours_ago=25)
    return make_conversation(tenant, channel=channel, external_id=CONTACT, name="Ana", **fields)


def test_the_conversation_says_whether_the_window_is_open(tenant, make_agent, graph):
    amy = make_agent(tenant, "amy")
    whatsapp = make_whatsapp(tenant)
    inbound_from(whatsapp, "15550000001", hours_ago=3)
    recent = make_conversation(tenant, channel=whatsapp, external_id="15550000001")
    old = closed_conversation(tenant, whatsapp)
    web = make_conversation(tenant)

    window = get(client_for(amy), f"conversations/{recent.pk}/", tenant).json()["window"]
    assert (window["applies"], window["open"], window["templates"]) == (True, True, True)
    closes_in = datetime.fromisoformat(window["closes_at"]) - timezone.now()
    assert timedelta(hours=20, minutes=59) < closes_in < timedelta(hours=21, minutes=1)

    window = get(client_for(amy), f"conversations/{old.pk}/", tenant).json()["window"]
    assert (window["applies"], window["open"]) == (True, False)
    since = timezone.now() - datetime.fromisoformat(window["last_inbound_at"])
    assert timedelta(hours=24, minutes=59) < since < timedelta(hours=25, minutes=1)

    assert get(client_for(amy), f"conversations/{web.pk}/", tenant).json()["window"]["applies"] is False


def test_a_reply_25_hours_after_the_last_message_is_refused_with_nothing_stored_or_sent(tenant, make_agent, graph):
    amy = make_agent(tenant, "amy")
    conversation = closed_conversation(tenant, make_whatsapp(tenant), state="handoff_requested")
    before = Message.objects.filter(conversation=conversation).count()

    response = post(client_for(amy), f"conversations/{conversation.pk}/reply/", tenant, {"text": "Hi Ana!"})

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "outside_customer_service_window"
    assert "only an approved template can reach them" in error["message"]
    assert error["details"]["remedy"] == "send an approved template"
    assert graph.requests == []
    assert Message.objects.filter(conversation=conversation).count() == before
    conversation.refresh_from_db()
    assert (conversation.state, conversation.assignee_id) == ("handoff_requested", None)  # nothing happened


def test_an_agent_typing_outside_the_window_sends_no_indicator(tenant, make_agent, graph, settings):
    settings.WHATSAPP_TYPING_INDICATOR = True
    amy = make_agent(tenant, "amy")
    conversation = closed_conversation(tenant, make_whatsapp(tenant), state="agent")

    services.agent_typing(tenant=tenant, conversation=conversation, user=amy, on=True)

    assert graph.requests == []  # Meta would refuse it: the contact last wrote 25 hours ago


def test_a_messenger_reply_after_24_hours_goes_as_a_human_agent_message(tenant, make_agent, graph):
    amy = make_agent(tenant, "amy")
    page = Channel.objects.create(tenant=tenant, type="messenger", name="Page", external_id="555000222")
    channel_secret_set(channel=page, values={"app_secret": "s", "access_token": "EAApage", "verify_token": "v"})
    psid = "7001002004"
    inbound_from(page, psid, hours_ago=30)
    conversation = make_conversation(tenant, channel=page, external_id=psid, state="agent")
    Conversation.objects.filter(pk=conversation.pk).update(assignee=amy)

    window = get(client_for(amy), f"conversations/{conversation.pk}/", tenant).json()["window"]
    assert (window["open"], window["templates"], window["human_agent_tag"]) == (False, False, "HUMAN_AGENT")
    until = datetime.fromisoformat(window["human_agent_closes_at"]) - timezone.now()
    assert timedelta(days=5, hours=17, minutes=59) < until < timedelta(days=5, hours=18, minutes=1)

    response = post(client_for(amy), f"conversations/{conversation.pk}/reply/", tenant, {"text": "Still here"})

    assert response.status_code == 200, response.content
    body = graph.requests[-1]["body"]
    assert (body["messaging_type"], body["tag"], body["message"]["text"]) == (
        "MESSAGE_TAG",
        "HUMAN_AGENT",
        "Still here",
    )


def test_the_template_list_has_only_the_approved_templates_of_that_channel_and_tenant(
    tenant, other_tenant, make_agent, graph
):
    amy = make_agent(tenant, "amy")
    whatsapp = make_whatsapp(tenant)
    add_templates(whatsapp, ORDER_UPDATE, WELCOME_BACK, PROMO, SPRING)
    second_line = make_whatsapp(tenant, prefix="2065")
    add_templates(second_line, {**WELCOME_BACK, "name": "other_line_hello"})
    theirs = make_whatsapp(other_tenant, prefix="3065")
    add_templates(theirs, {**ORDER_UPDATE, "name": "globex_update"})
    conversation = closed_conversation(tenant, whatsapp)

    response = get(client_for(amy), f"conversations/{conversation.pk}/templates/", tenant)

    assert response.status_code == 200
    listed = response.json()["templates"]
    assert [(t["name"], t["language"], t["category"]) for t in listed] == [
        ("order_update", "en_US", "UTILITY"),
        ("welcome_back", "en_US", "MARKETING"),
    ]
    order, welcome = listed
    assert order["body"] == "Hi {{1}}, your order {{2}} has shipped."
    assert order["variables"] == {"body": ["1", "2"], "header": "image"}
    assert (order["header"], order["footer"], order["buttons"]) == (
        {"format": "IMAGE", "text": ""},
        "Acme Store",
        ["Track it"],
    )
    assert welcome["variables"] == {"body": ["first_name"]}
    assert welcome["parameter_format"] == "NAMED"


def test_an_approved_template_reaches_the_graph_api_and_the_conversation_moves_to_the_agent(
    tenant, make_agent, graph, django_capture_on_commit_callbacks
):
    amy = make_agent(tenant, "amy", first_name="Amy")
    whatsapp = make_whatsapp(tenant)
    add_templates(whatsapp, ORDER_UPDATE, WELCOME_BACK)
    conversation = closed_conversation(tenant, whatsapp, state="handoff_requested")
    Conversation.objects.filter(pk=conversation.pk).update(waiting_since=timezone.now() - timedelta(hours=25))
    layer = get_channel_layer()
    agent_socket = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live.tenant_group(tenant.pk), agent_socket)

    with django_capture_on_commit_callbacks(execute=True):
        response = post(
            client_for(amy),
            f"conversations/{conversation.pk}/template/",
            tenant,
            {
                "name": "order_update",
                "language": "en_US",
                "variables": {"body": ["Ana", "A42"], "header": {"link": "https://cdn.example.com/parcel.jpg"}},
            },
        )

    assert response.status_code == 200, response.content
    frame = response.json()["message"]
    assert (frame["kind"], frame["sender"], frame["status"], frame["agent"]["name"]) == (
        "template",
        "agent",
        "sent",
        "Amy",
    )
    assert frame["text"] == "[image]\n\nHi Ana, your order A42 has shipped.\n\nAcme Store\n\n[Track it]"
    # One Graph call: the template (no "Amy joined" text: free-form cannot reach them outside the window).
    [sent] = graph.requests
    assert sent["path"].endswith(f"/{whatsapp.external_id}/messages")
    assert sent["body"]["to"] == CONTACT
    assert sent["body"]["type"] == "template"
    assert sent["body"]["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/parcel.jpg"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "A42"}]},
        ],
    }  # fmt: skip
    conversation.refresh_from_db()
    assert (conversation.state, conversation.assignee_id, conversation.waiting_since) == ("agent", amy.pk, None)
    # The tenant's agents see it arrive live, and the conversation shows it.
    frames_until(agent_socket, lambda f: f["type"] == "message" and f["message"]["kind"] == "template")
    timeline = get(client_for(amy), f"conversations/{conversation.pk}/", tenant).json()["timeline"]
    assert timeline[-1]["kind"] == "template"
    assert timeline[-1]["text"].startswith("[image]\n\nHi Ana, your order A42 has shipped.")


def test_named_variables_go_with_their_names(tenant, make_agent, graph):
    amy = make_agent(tenant, "amy")
    whatsapp = make_whatsapp(tenant)
    add_templates(whatsapp, WELCOME_BACK)
    conversation = closed_conversation(tenant, whatsapp)

    response = post(
        client_for(amy), f"conversations/{conversation.pk}/template/", tenant,
        {"name": "welcome_back", "language": "en_US", "variables": {"body": {"first_name": "Ana"}}},
    )  # fmt: skip

    assert response.status_code == 200, response.content
    assert graph.requests[-1]["body"]["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]}
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ({"name": "promo_blast", "language": "en_US"}, 409, "template_not_sendable", "INVALID_FORMAT"),
        ({"name": "spring_sale", "language": "es"}, 409, "template_not_sendable", "paused by Meta"),
        ({"name": "nope", "language": "en_US"}, 404, "not_found", "no template 'nope'"),
        ({"name": "order_update", "language": "en_US", "variables": {"body": ["Ana"]}}, 400, "invalid_variables",
         "missing: ['2']"),
        ({"name": "order_update", "language": "en_US", "variables": {"body": ["Ana", "A42"]}}, 400,
         "invalid_variables", "image header"),
    ],
)  # fmt: skip
def test_a_refused_template_says_why_and_nothing_is_stored_or_sent(tenant, make_agent, graph, body, status, code, says):
    amy = make_agent(tenant, "amy")
    whatsapp = make_whatsapp(tenant)
    add_templates(whatsapp, ORDER_UPDATE, PROMO, SPRING)
    conversation = closed_conversation(tenant, whatsapp, state="handoff_requested")
    before = Message.objects.filter(conversation=conversation).count()

    response = post(client_for(amy), f"conversations/{conversation.pk}/template/", tenant, body)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert says in response.json()["error"]["message"]
    assert graph.requests == []
    assert Message.objects.filter(conversation=conversation).count() == before
    conversation.refresh_from_db()
    assert (conversation.state, conversation.assignee_id) == ("handoff_requested", None)


def test_another_tenant_reaches_neither_the_templates_nor_the_conversation(tenant, other_tenant, make_agent, graph):
    whatsapp = make_whatsapp(tenant)
    add_templates(whatsapp, ORDER_UPDATE, WELCOME_BACK)
    conversation = closed_conversation(tenant, whatsapp)
    mallory = make_agent(other_tenant, "mallory")
    theirs = make_whatsapp(other_tenant, prefix="3065")
    add_templates(theirs, {**WELCOME_BACK, "name": "globex_hello"})
    their_conversation = make_conversation(other_tenant, channel=theirs, external_id=CONTACT)
    send = {"name": "welcome_back", "language": "en_US", "variables": {"body": {"first_name": "Ana"}}}
    client = client_for(mallory)

    for path in ("templates/", "template/", ""):
        url = f"conversations/{conversation.pk}/{path}"
        # Named as their own tenant, our conversation does not exist; named as ours, they are no agent of it.
        as_theirs = post(client, url, other_tenant, send) if path == "template/" else get(client, url, other_tenant)
        as_ours = post(client, url, tenant, send) if path == "template/" else get(client, url, tenant)
        assert (as_theirs.status_code, as_ours.status_code) == (404, 403), path
    # Their conversation cannot send our template (looked up on their channel only).
    response = post(client, f"conversations/{their_conversation.pk}/template/", other_tenant, send)
    assert response.status_code == 404
    assert graph.requests == []
    assert not Message.objects.filter(kind="template").exists()
    assert [
        t["name"]
        for t in get(client, f"conversations/{their_conversation.pk}/templates/", other_tenant).json()["templates"]
    ] == ["globex_hello"]


def test_the_admins_reply_box_refuses_a_reply_outside_the_window_too(tenant, graph):
    from tenants.services import staff_user_create

    amy, _ = staff_user_create(tenant=tenant, username="agent-amy", role="agent", password="pw-amy-123456")
    conversation = closed_conversation(tenant, make_whatsapp(tenant), state="handoff_requested")
    before = Message.objects.filter(conversation=conversation).count()

    response = client_for(amy).post(
        f"/admin/conversations/conversation/{conversation.pk}/reply/", {"text": "Hi Ana!"}, follow=True
    )

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("Not sent:") and "template" in m for m in shown), shown
    assert graph.requests == []
    assert Message.objects.filter(conversation=conversation).count() == before
