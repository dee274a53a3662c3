"""A tenant function's file and options on Messenger, through real turns: the signed webhook, a real
worker, the real openai client against a local server, a local function endpoint and the local Graph
API server. The image goes by URL (Meta fetches it), its caption as a text of its own, the options as
quick replies; a quick-reply tap's payload reaches the function on the next turn."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from channels_app.models import InboundEvent
from conversations import services
from conversations.models import Message
from events.models import Event
from tests.channels_app.conftest import MS_PAGE_ID, MS_SECRET
from tests.conftest import wait_until
from tests.conversations.conftest import openai_server  # noqa: F401  (fixture)
from tests.conversations.servers import FunctionEndpoint, function_handler

PSID = "6944325612345678"


@pytest.fixture
def worker(live_worker: Any, settings: Any) -> Iterator[Any]:
    settings.TURN_DEBOUNCE_SECONDS = 0
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True  # the function endpoint is a local server
    settings.LLM_MAX_RETRIES = 0
    yield live_worker
    wait_until(lambda: not InboundEvent.objects.filter(status="pending").exists(), timeout=30)


def messenger_message(message: dict[str, Any]) -> bytes:
    now = int(time.time() * 1000)
    event = {"sender": {"id": PSID}, "recipient": {"id": MS_PAGE_ID}, "timestamp": now, "message": message}
    return json.dumps({"object": "page", "entry": [{"id": MS_PAGE_ID, "time": now, "messaging": [event]}]}).encode()


def messages_to_user(graph: Any) -> list[dict[str, Any]]:
    return [p["json"]["message"] for p in graph.posts() if "message" in (p["json"] or {})]


def test_a_functions_image_and_options_reach_a_messenger_user_and_a_quick_reply_tap_reaches_the_function(
    worker,
    ms_channel,
    graph,
    post_webhook,
    local_http_server,
    openai_server,  # noqa: F811
    tenant,
):
    graph.profiles[PSID] = {"first_name": "Ana", "last_name": "Silva"}
    endpoint = FunctionEndpoint(
        answer={
            "result": {"slots": 2},
            "attachments": [{"link": "https://cdn.acme.test/menu.png", "caption": "Our menu"}],
            "choices": {
                "body": "When?",
                "options": [{"id": "slot_am", "title": "Morning"}, {"id": "slot_pm", "title": "Afternoon"}],
            },
        }
    )
    services.function_create(
        tenant=tenant,
        name="book_table",
        description="Free table slots",
        parameters={"type": "object", "properties": {}},
        endpoint_url=local_http_server(function_handler(endpoint)).url + "/book",
        timeout_seconds=5.0,
    )
    openai_server.replies = [
        {"tool_calls": [("book_table", "{}")]},
        {"content": "Two slots are free today."},
        {"tool_calls": [("book_table", "{}")]},
        {"content": "Booked for the afternoon."},
    ]

    sent = post_webhook("messenger", messenger_message({"mid": "m_ASK1", "text": "A table for two?"}), MS_SECRET)
    assert sent.status_code == 200

    wait_until(lambda: len(messages_to_user(graph)) >= 4, timeout=30)
    text, image, caption, options = messages_to_user(graph)
    assert text == {"text": "Two slots are free today."}
    assert image == {
        "attachment": {"type": "image", "payload": {"url": "https://cdn.acme.test/menu.png", "is_reusable": True}}
    }
    assert caption == {"text": "Our menu"}
    assert options == {
        "text": "When?",
        "quick_replies": [
            {"content_type": "text", "title": "Morning", "payload": "slot_am"},
            {"content_type": "text", "title": "Afternoon", "payload": "slot_pm"},
        ],
    }
    rows = wait_until(
        lambda: (
            list(Message.objects.filter(sender="assistant", status="sent").order_by("id"))
            if Message.objects.filter(sender="assistant", status="sent").count() == 3
            else None
        )
    )
    assert [m.kind for m in rows] == ["text", "image", "choices"]
    # The caption went as a message of its own: both ids are kept, so either's status finds the row.
    image_id, caption_id = rows[1].payload["platform_message_ids"]
    assert rows[1].platform_message_id == image_id and caption_id.startswith("m_OUT") and caption_id != image_id
    assert Event.objects.filter(type="message.sent", payload__kind="choices").count() == 1

    tap = {"mid": "m_TAP1", "text": "Afternoon", "quick_reply": {"payload": "slot_pm"}}
    assert post_webhook("messenger", messenger_message(tap), MS_SECRET).status_code == 200

    wait_until(lambda: len(endpoint.calls) == 2, timeout=30)
    assert json.loads(endpoint.calls[0]["raw"])["reply"] is None
    assert json.loads(endpoint.calls[1]["raw"])["reply"] == {"payload": "slot_pm", "title": "Afternoon"}
