"""POST /api/webchat/sessions/: tokens for allowed origins only, visitors resumed with their history."""

from __future__ import annotations

import jwt
import pytest
from django.conf import settings

from channels_app import webchat
from conversations.models import Contact, Conversation, Message
from tests.webchat.conftest import ORIGIN

URL = "/api/webchat/sessions/"


def start(client, widget_key, origin=ORIGIN, visitor_token=""):
    headers = {"HTTP_ORIGIN": origin} if origin else {}
    return client.post(
        URL, {"widget_key": widget_key, "visitor_token": visitor_token}, content_type="application/json", **headers
    )


def test_session_issues_token_naming_tenant_channel_and_visitor(client, webchat_channel, tenant):
    response = start(client, webchat_channel.external_id)

    body = response.json()
    assert response.status_code == 201
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    claims = webchat.token_verify(token=body["token"])
    assert claims.tenant_id == str(tenant.pk)
    assert claims.channel_id == str(webchat_channel.pk)
    assert claims.visitor_id == body["visitor_id"]
    assert body["visitor_id"].startswith("v_")
    assert body["resumed"] is False
    assert body["history"] == []
    assert body["websocket_path"] == "/ws/webchat/"
    assert body["widget"]["max_message_chars"] == settings.WEBCHAT_MAX_MESSAGE_CHARS
    assert claims.expires_at - jwt.decode(body["token"], options={"verify_signature": False})["iat"] == (
        settings.WEBCHAT_JWT_TTL_SECONDS
    )


def test_returning_visitor_resumes_the_same_visitor_with_history(client, webchat_channel):
    first = start(client, webchat_channel.external_id).json()
    webchat.receive_message(
        channel=webchat_channel, visitor_id=first["visitor_id"], client_message_id="c_0000000001", text="Hello?"
    )

    again = start(client, webchat_channel.external_id, visitor_token=first["visitor_token"]).json()

    assert again["resumed"] is True
    assert again["visitor_id"] == first["visitor_id"]
    assert [(m["role"], m["text"], m["id"]) for m in again["history"]] == [("user", "Hello?", "c_0000000001")]


def test_history_has_replies_with_their_sources_in_order(client, webchat_channel, tenant):
    visitor = start(client, webchat_channel.external_id).json()
    webchat.receive_message(
        channel=webchat_channel, visitor_id=visitor["visitor_id"], client_message_id="c_0000000001", text="Hours?"
    )
    contact = Contact.objects.create(tenant=tenant, channel=webchat_channel, external_id=visitor["visitor_id"])
    conversation = Conversation.objects.create(tenant=tenant, channel=webchat_channel, contact=contact)
    reply = Message.objects.create(
        tenant=tenant,
        conversation=conversation,
        channel=webchat_channel,
        direction=Message.Direction.OUTBOUND,
        sender=Message.Sender.ASSISTANT,
        content="We open at 9.",
        payload={"sources": [{"title": "Opening hours", "page": 2, "score": 0.9, "url": "javascript:alert(1)"}]},
        status=Message.Status.SENT,
    )
    Message.objects.create(  # tool calls are not the visitor's business
        tenant=tenant,
        conversation=conversation,
        channel=webchat_channel,
        direction=Message.Direction.OUTBOUND,
        sender=Message.Sender.TOOL,
        content="search_knowledge",
    )

    history = start(client, webchat_channel.external_id, visitor_token=visitor["visitor_token"]).json()["history"]

    assert [(m["role"], m["text"]) for m in history] == [("user", "Hours?"), ("assistant", "We open at 9.")]
    assert history[1]["id"] == f"m{reply.pk}"
    assert history[1]["sources"] == [{"title": "Opening hours", "url": "", "page": 2}]


def test_session_is_refused_for_an_origin_the_channel_does_not_allow(client, webchat_channel):
    response = start(client, webchat_channel.external_id, origin="https://evil.example")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert "https://evil.example" in response.json()["error"]["message"]


def test_session_is_refused_without_an_origin(client, webchat_channel):
    response = start(client, webchat_channel.external_id, origin="")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_required"


def test_origin_matching_ignores_case_and_default_port(client, make_webchat_channel, tenant):
    channel = make_webchat_channel(tenant, origins=["https://Shop.Example:443/"])

    assert start(client, channel.external_id, origin="https://shop.example").status_code == 201
    assert start(client, channel.external_id, origin="http://shop.example").status_code == 403


def test_unknown_widget_key_answers_404(client, db):
    response = start(client, "wk_doesnotexist")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_widget"


def test_switched_off_channel_answers_403(client, webchat_channel):
    webchat_channel.is_active = False
    webchat_channel.save()

    response = start(client, webchat_channel.external_id)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "channel_inactive"


def test_missing_widget_key_is_a_validation_error(client, db):
    response = client.post(URL, {}, content_type="application/json", HTTP_ORIGIN=ORIGIN)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "widget_key" in response.json()["error"]["details"]


def test_visitor_token_of_another_tenants_widget_resumes_nothing(
    client, webchat_channel, make_webchat_channel, other_tenant
):
    other_channel = make_webchat_channel(other_tenant)
    theirs = start(client, other_channel.external_id).json()
    webchat.receive_message(
        channel=other_channel, visitor_id=theirs["visitor_id"], client_message_id="c_secret0001", text="my secret"
    )

    mine = start(client, webchat_channel.external_id, visitor_token=theirs["visitor_token"]).json()

    assert mine["resumed"] is False
    assert mine["visitor_id"] != theirs["visitor_id"]
    assert mine["history"] == []


def test_tampered_visitor_token_starts_a_new_visitor(client, webchat_channel):
    first = start(client, webchat_channel.external_id).json()
    visitor_id, _, signature = first["visitor_token"].partition(".")
    forged = f"v_{'A' * 22}.{signature}"

    again = start(client, webchat_channel.external_id, visitor_token=forged).json()

    assert again["resumed"] is False
    assert again["visitor_id"] not in (visitor_id, f"v_{'A' * 22}")


def test_cors_preflight_is_answered_for_the_widget(client, db):
    response = client.options(URL, HTTP_ORIGIN=ORIGIN, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert response["Access-Control-Allow-Headers"] == "Content-Type"


@pytest.mark.parametrize("field", ["tnt", "chn", "sub"])
def test_token_with_any_claim_changed_is_invalid(webchat_channel, field):
    token, _ = webchat.token_issue(channel=webchat_channel, visitor_id="v_" + "x" * 22)
    header, _payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims[field] = "changed"
    tampered_payload = jwt.encode(claims, "not-the-key-" * 4, algorithm="HS256").split(".")[1]

    with pytest.raises(webchat.WebchatError) as refused:
        webchat.token_verify(token=f"{header}.{tampered_payload}.{signature}")

    assert refused.value.code == "token_invalid"
