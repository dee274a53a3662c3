"""A tenant function's answer can carry files and options for the user: in full turns (WhatsApp in
through the signed webhook, a real worker, the real openai client, a local function endpoint and the
local Graph API server), the user gets the text reply, then the files (by link), then the options to
tap, each recorded in the conversation with its event; bad ones are refused and recorded while the
rest goes; nothing free-form leaves outside the customer-service window; a tap's payload reaches the
function on the next turn."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from django.test import Client

from channels_app.models import InboundEvent
from conversations import services, tools
from conversations.models import Contact, Conversation, Message
from conversations.pipeline import function_sends
from conversations.pipeline.turn import Turn
from events.models import Event
from tests.conftest import wait_until
from tests.conversations.conftest import APP_SECRET, deliver
from tests.conversations.servers import FunctionEndpoint, function_handler
from tests.payloads import whatsapp_payload

USER = "15551234567"
OPTIONS = [{"id": "track", "title": "Track it"}, {"id": "human", "title": "Talk to us"}]


def make_function(tenant: Any, url: str) -> Any:
    return services.function_create(
        tenant=tenant,
        name="get_order",
        description="An order's status, with its parcel's photo",
        parameters={"type": "object", "properties": {"order_id": {"type": "string"}}},
        endpoint_url=url,
        timeout_seconds=5.0,
    )


def sends(graph: Any) -> list[dict[str, Any]]:
    """What reached the user: message POSTs (not read marks or typing)."""
    return [r["body"] for r in graph.requests if r["body"].get("type") in ("text", "image", "document", "interactive")]


def tool_results(body: dict[str, Any]) -> list[Any]:
    return [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]


def post_signed(payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = Client().post(
        "/webhooks/whatsapp", data=body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature
    )
    assert response.status_code == 200, response.content


def test_the_user_gets_the_text_then_the_image_by_link_then_the_buttons_and_the_conversation_records_them(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint(
        answer={
            "result": {"status": "shipped", "eta": "tomorrow"},
            "attachments": [{"link": "https://cdn.acme.test/parcels/A42.jpg", "caption": "Your parcel"}],
            "choices": {"body": "Anything else?", "options": OPTIONS},
        }
    )
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    openai_server.replies = [{"tool_calls": [("get_order", '{"order_id": "A42"}')]}]
    openai_server.default = lambda body: {"content": "Order A42 has shipped; it arrives tomorrow."}

    deliver(whatsapp, text="Where is order A42?", sender=USER)

    wait_until(lambda: len(sends(graph)) >= 3)
    text, image, buttons = sends(graph)
    assert text["text"]["body"] == "Order A42 has shipped; it arrives tomorrow."
    assert (image["to"], image["image"]) == (
        USER,
        {"link": "https://cdn.acme.test/parcels/A42.jpg", "caption": "Your parcel"},
    )
    assert buttons["interactive"] == {
        "type": "button",
        "body": {"text": "Anything else?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "track", "title": "Track it"}},
                {"type": "reply", "reply": {"id": "human", "title": "Talk to us"}},
            ]
        },
    }
    # The model read the result only: never the link, which it would otherwise repeat.
    assert tool_results(openai_server.requests[1]) == [{"status": "shipped", "eta": "tomorrow"}]
    assert "cdn.acme.test" not in json.dumps(openai_server.requests[1])
    # The conversation shows all three, in that order, sent (the inbox reads payload.media / choices).
    conversation = Conversation.objects.get(channel=whatsapp)
    rows = wait_until(
        lambda: (
            list(Message.objects.filter(conversation=conversation, sender="assistant", status="sent").order_by("id"))
            if Message.objects.filter(conversation=conversation, sender="assistant", status="sent").count() == 3
            else None
        )
    )
    assert [(m.kind, m.content) for m in rows] == [
        ("text", "Order A42 has shipped; it arrives tomorrow."),
        ("image", "Your parcel"),
        ("choices", "Anything else?\n\n1. Track it\n2. Talk to us"),
    ]
    assert rows[1].payload["media"]["link"] == "https://cdn.acme.test/parcels/A42.jpg"
    assert rows[1].payload["function"] == "get_order"
    assert rows[2].payload["choices"]["options"][0] == {"id": "track", "title": "Track it", "description": ""}
    assert all(m.platform_message_id.startswith("wamid.out") for m in rows)
    sent = wait_until(lambda: list(Event.objects.filter(type="message.sent").order_by("id")))
    by_message = {e.payload["message_id"]: e.payload for e in sent}
    assert by_message[rows[1].pk]["kind"] == "image" and by_message[rows[1].pk]["function"] == "get_order"
    assert by_message[rows[2].pk]["kind"] == "choices"


def test_a_non_https_or_internal_link_is_refused_and_recorded_while_the_text_and_the_good_file_go(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant, settings
):
    endpoint = FunctionEndpoint(
        answer={
            "result": "Here is your invoice.",
            "attachments": [
                {"link": "http://cdn.acme.test/invoice.pdf"},
                {"link": "https://169.254.169.254/latest/meta-data/iam.pdf"},
                {"link": "https://10.0.0.7/internal/report.pdf"},
                {"link": "https://cdn.acme.test/invoices/2026-11.pdf", "filename": "Invoice November.pdf"},
            ],
        }
    )
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/invoices")
    # The deployment's rules: private addresses refused; the function endpoint's own host allowed.
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    settings.EGRESS_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    openai_server.replies = [{"tool_calls": [("get_order", "{}")]}]
    openai_server.default = lambda body: {"content": "Here is your invoice."}

    deliver(whatsapp, text="My invoice please", sender=USER)

    # The turn is over once its message is processed (the finish stage runs after the function's sends).
    wait_until(
        lambda: InboundEvent.objects.filter(
            kind=InboundEvent.Kind.MESSAGE, status=InboundEvent.Status.PROCESSED
        ).exists()
    )
    text, document = sends(graph)
    assert text["text"]["body"] == "Here is your invoice."
    assert document["document"] == {
        "link": "https://cdn.acme.test/invoices/2026-11.pdf",
        "filename": "Invoice November.pdf",
    }
    failed = wait_until(
        lambda: (
            list(Message.objects.filter(sender="assistant", status="failed").order_by("id"))
            if Message.objects.filter(sender="assistant", status="failed").count() == 3
            else None
        )
    )
    assert [m.payload["media"]["link"] for m in failed] == [
        "http://cdn.acme.test/invoice.pdf",
        "https://169.254.169.254/latest/meta-data/iam.pdf",
        "https://10.0.0.7/internal/report.pdf",
    ]
    assert failed[0].error["message"] == "the link must be an https:// URL (the platform fetches it)"
    assert "link-local" in failed[1].error["message"]
    assert "private" in failed[2].error["message"]
    assert {m.error["code"] for m in failed} == {"invalid_media"}
    events = wait_until(
        lambda: (
            list(Event.objects.filter(type="message.failed"))
            if Event.objects.filter(type="message.failed").count() == 3
            else None
        )
    )
    assert sorted(e.payload["message_id"] for e in events) == [m.pk for m in failed]
    assert {(e.payload["stage"], e.payload["code"], e.payload["kind"]) for e in events} == {
        ("send", "invalid_media", "document")
    }
    reply = Message.objects.get(sender="assistant", kind="text")
    assert reply.status == "sent"


def old_message(channel: Any, *, hours_ago: float, text: str) -> dict[str, Any]:
    payload = whatsapp_payload(
        phone_number_id=channel.external_id, sender=USER, text=text, wamid=f"wamid.old{time.time_ns()}"
    )
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["timestamp"] = str(int(time.time() - hours_ago * 3600))
    return payload


def test_outside_the_window_neither_the_reply_nor_the_functions_file_and_options_are_sent(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint(
        answer={
            "result": "ok",
            "attachments": [{"link": "https://cdn.acme.test/a.png"}],
            "choices": {"body": "More?", "options": OPTIONS},
        }
    )
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    openai_server.replies = [{"tool_calls": [("get_order", "{}")]}]
    openai_server.default = lambda body: {"content": "Done."}

    post_signed(old_message(whatsapp, hours_ago=25, text="Where is my order?"))  # answered only now

    # The files and options are recorded as they are refused, the reply when the turn finishes.
    wait_until(
        lambda: Message.objects.filter(sender="assistant", kind__in=["text", "choices"], status="failed").count() == 2
    )
    assert sends(graph) == []
    rows = {m.kind: m for m in Message.objects.filter(sender="assistant")}
    assert rows["text"].status == "failed" and rows["text"].error["reason"] == "outside_window"
    assert (rows["image"].status, rows["image"].error["code"], rows["image"].error["reason"]) == (
        "failed",
        "reply_not_delivered",
        "outside_window",
    )
    assert rows["choices"].error["code"] == "reply_not_delivered"


@pytest.mark.django_db
def test_the_stage_itself_checks_the_window_before_any_graph_call(whatsapp, graph, tenant):
    """Even with a reply marked delivered, a file or options outside the window go nowhere: the
    channels area's window check refuses them before the Graph API is called."""
    contact = Contact.objects.create(tenant=tenant, channel=whatsapp, external_id=USER)
    conversation = Conversation.objects.create(tenant=tenant, channel=whatsapp, contact=contact)
    InboundEvent.objects.create(
        tenant_id=tenant.pk,
        channel=whatsapp,
        kind=InboundEvent.Kind.MESSAGE,
        dedupe_key="wamid.last",
        sender_external_id=USER,
        normalized={"message_id": "wamid.last", "timestamp": time.time() - 25 * 3600},
        status=InboundEvent.Status.PROCESSED,
    )
    turn = Turn(tenant=tenant, channel=whatsapp, sender_external_id=USER)
    turn.contact, turn.conversation, turn.delivered = contact, conversation, True
    turn.reply_message = turn.store_assistant_text("Here you are.", {})
    _, turn.function_sends = tools.split_answer(
        "get_order",
        {"attachments": [{"link": "https://cdn.acme.test/a.png"}], "choices": {"body": "More?", "options": OPTIONS}},
    )

    function_sends.run(turn)

    assert graph.requests == []
    rows = list(Message.objects.filter(kind__in=["image", "choices"]).order_by("id"))
    assert [(m.kind, m.status, m.error["code"], m.error["reason"]) for m in rows] == [
        ("image", "failed", "outside_customer_service_window", "outside_window"),
        ("choices", "failed", "outside_customer_service_window", "outside_window"),
    ]


def tap(channel: Any, *, option_id: str, title: str) -> dict[str, Any]:
    payload = whatsapp_payload(
        phone_number_id=channel.external_id, sender=USER, text="", wamid=f"wamid.tap{time.time_ns()}"
    )
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message["type"] = "interactive"
    message["interactive"] = {"type": "button_reply", "button_reply": {"id": option_id, "title": title}}
    return payload


def test_a_taps_payload_reaches_the_function_and_the_model_on_the_next_turn(
    live_worker, whatsapp, graph, openai_server, local_http_server, tenant
):
    endpoint = FunctionEndpoint(answer={"result": "shipped", "choices": {"body": "What now?", "options": OPTIONS}})
    make_function(tenant, local_http_server(function_handler(endpoint)).url + "/orders")
    openai_server.replies = [
        {"tool_calls": [("get_order", '{"order_id": "A42"}')]},
        {"content": "It has shipped."},
        {"tool_calls": [("get_order", '{"order_id": "A42"}')]},
        {"content": "Here is the tracking."},
    ]

    deliver(whatsapp, text="Where is order A42?", sender=USER)
    wait_until(lambda: len([s for s in sends(graph) if s["type"] == "interactive"]) == 1)
    assert json.loads(endpoint.calls[0]["raw"])["reply"] is None
    post_signed(tap(whatsapp, option_id="track", title="Track it"))

    wait_until(lambda: len(endpoint.calls) == 2)
    assert json.loads(endpoint.calls[1]["raw"])["reply"] == {"payload": "track", "title": "Track it"}
    system = openai_server.requests[2]["messages"][0]["content"]
    assert 'The user tapped the option "Track it" (option id: track).' in system
    assert openai_server.requests[2]["messages"][-1] == {"role": "user", "content": "Track it"}


# --- the shape of a function's answer, checked before anything is sent -------------------------------------


@pytest.mark.django_db
def test_an_answer_without_files_or_options_is_read_by_the_model_as_it_is(settings):
    assert tools.split_answer("f", {"status": "shipped"}) == ({"status": "shipped"}, [])
    assert tools.split_answer("f", ["a"]) == (["a"], [])
    content, found = tools.split_answer("f", {"status": "shipped", "choices": {"body": "?", "options": OPTIONS}})
    assert content == {"status": "shipped"}  # without ``result``: the other keys
    assert [s.kind for s in found] == ["choices"]


@pytest.mark.django_db
def test_each_bad_item_is_refused_with_its_reason_and_the_good_ones_kept(settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    _, found = tools.split_answer(
        "f",
        {
            "result": 1,
            "attachments": [
                {"link": "https://cdn.acme.test/a.jpg"},
                {"link": "https://cdn.acme.test/file"},
                {"link": "https://cdn.acme.test/file", "mime_type": "application/pdf"},
                {"link": "https://user:pw@cdn.acme.test/a.jpg"},
                {"link": "https://127.0.0.1/a.jpg"},
            ],
        },
    )
    _, more = tools.split_answer(
        "f",
        {
            "attachments": [
                {"link": "https://cdn.acme.test/a.jpg", "kind": "sticker"},
                {"link": "https://cdn.acme.test/a.jpg", "size": 3},
                {"link": "https://cdn.acme.test/a.jpg", "caption": "x" * 1025},
            ],
            "choices": {"body": "Pick", "options": [{"id": "a", "title": "A title well over twenty-four"}]},
        },
    )
    found += more
    assert [(s.kind, s.refused) for s in found] == [
        ("image", ""),
        ("document", "give mime_type (the link's and the filename's extension do not say the type)"),
        ("document", ""),
        ("image", "the link is refused: credentials in the URL are not allowed; use a secret"),
        ("image", "the link is refused: destination refused: 127.0.0.1 resolves to a loopback address"),
        ("image", "kind must be one of image, document, audio, video"),
        ("image", "unknown fields ['size']: use caption, filename, kind, link, mime_type"),
        ("image", "caption is over 1024 characters"),
        ("choices", "title is over 24 characters"),
    ]
    assert found[0].media is not None and found[0].media.mime_type == "image/jpeg"
    assert found[3].media is None


@pytest.mark.django_db
def test_more_than_five_attachments_or_a_malformed_choices_are_refused():
    _, found = tools.split_answer(
        "f",
        {
            "attachments": [{"link": f"https://cdn.acme.test/{i}.png"} for i in range(6)],
            "choices": {"body": "Pick", "options": [{"id": "a", "title": "A"}, {"id": "a", "title": "B"}]},
        },
    )
    assert [(s.kind, s.refused) for s in found][4:] == [
        ("image", ""),
        ("image", "at most 5 attachments in one answer"),
        ("choices", "every option needs its own id"),
    ]
    assert [s.refused for s in found] == [""] * 5 + [
        "at most 5 attachments in one answer",
        "every option needs its own id",
    ]
    _, [bad] = tools.split_answer("f", {"attachments": "https://cdn.acme.test/a.png"})
    assert bad.refused == "attachments must be a list"


@pytest.mark.django_db
def test_a_retried_turn_reads_the_tap_from_the_stored_message(whatsapp, tenant):
    """A turn retried later (``process_conversation``: no inbound events) still knows the tap."""
    from conversations.pipeline import intake

    contact = Contact.objects.create(tenant=tenant, channel=whatsapp, external_id=USER)
    conversation = Conversation.objects.create(tenant=tenant, channel=whatsapp, contact=contact)
    stored = [
        Message.objects.create(
            tenant=tenant,
            conversation=conversation,
            channel=whatsapp,
            direction=Message.Direction.INBOUND,
            sender="user",
            kind=kind,
            content=text,
            status="received",
            payload={"normalized": {"reply": reply}},
        )
        for kind, text, reply in [
            ("interactive", "Track it", {"id": "track", "payload": "track", "title": "Track it"}),
            ("text", "and quickly", None),
        ]
    ]
    turn = Turn(tenant=tenant, channel=whatsapp, sender_external_id=USER)
    turn.user_messages = stored

    assert intake._latest_tap(turn, []) == {"payload": "track", "title": "Track it"}
    turn.user_messages = stored[1:]
    assert intake._latest_tap(turn, []) is None
    # Web chat's tap names the option by id only: its title is the message's text.
    webchat_tap = Message.objects.create(
        tenant=tenant, conversation=conversation, channel=whatsapp, direction=Message.Direction.INBOUND,
        sender="user", kind="text", content="Morning", status="received",
        payload={"normalized": {"reply": {"id": "slot_am", "message_id": "m_1"}}},
    )  # fmt: skip
    turn.user_messages = [webchat_tap]
    assert intake._latest_tap(turn, []) == {"payload": "slot_am", "title": "Morning"}
