"""One test per Messenger fixture, through the real webhook view with a real signature."""

from __future__ import annotations

from typing import Any

from channels_app.models import InboundEvent
from tests.channels_app.conftest import MS_SECRET, fixture_bytes, stored_messages, stored_statuses

PSID = "6944325612345678"


def receive(post_webhook: Any, name: str) -> Any:
    response = post_webhook("messenger", fixture_bytes("messenger", name), MS_SECRET)
    assert response.status_code == 200, response.content
    return response


def only_message(channel: Any) -> dict[str, Any]:
    messages = stored_messages(channel)
    assert len(messages) == 1
    return messages[0]


def test_text(ms_channel, post_webhook):
    receive(post_webhook, "text")
    m = only_message(ms_channel)
    assert (m["platform"], m["channel_external_id"], m["type"]) == ("messenger", "106543210987654", "text")
    assert m["message_id"].startswith("m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM")
    assert (m["sender_id"], m["text"], m["timestamp"]) == (PSID, "Do you deliver on Sundays?", 1732539999.0)


def test_reply_to(ms_channel, post_webhook):
    receive(post_webhook, "reply_to")
    m = only_message(ms_channel)
    assert (m["type"], m["text"], m["context_message_id"]) == ("text", "this one", "m_OUTBOUND1")


def test_quick_reply(ms_channel, post_webhook):
    receive(post_webhook, "quick_reply")
    m = only_message(ms_channel)
    assert (m["type"], m["text"]) == ("quick_reply", "Red")
    assert m["reply"] == {"payload": "COLOR_RED", "title": "Red"}


def test_postback(ms_channel, post_webhook):
    receive(post_webhook, "postback")
    m = only_message(ms_channel)
    assert (m["type"], m["message_id"], m["text"]) == ("postback", "m_POSTBACK1", "Get Started")
    assert m["reply"] == {"payload": "GET_STARTED", "title": "Get Started"}


def test_image(ms_channel, post_webhook):
    receive(post_webhook, "image")
    m = only_message(ms_channel)
    assert m["type"] == "image"
    assert [(x["kind"], x["url"]) for x in m["media"]] == [
        ("image", "https://scontent.xx.fbcdn.net/v/t1.15752-9/photo.jpg?_nc_cat=1&oh=abc&oe=5E8")
    ]


def test_attachments_file_and_audio(ms_channel, post_webhook):
    receive(post_webhook, "attachments_file_and_audio")
    m = only_message(ms_channel)
    assert m["type"] == "file"
    assert [x["kind"] for x in m["media"]] == ["file", "audio"]
    assert m["media"][0]["url"] == "https://cdn.fbsbx.com/v/t59.2708-21/terms.pdf?_nc_cat=1"


def test_video(ms_channel, post_webhook):
    receive(post_webhook, "video")
    m = only_message(ms_channel)
    assert (m["type"], m["media"][0]["kind"]) == ("video", "video")


def test_sticker(ms_channel, post_webhook):
    receive(post_webhook, "sticker")
    m = only_message(ms_channel)
    assert (m["type"], m["media"][0]["kind"]) == ("sticker", "sticker")


def test_location(ms_channel, post_webhook):
    receive(post_webhook, "location")
    m = only_message(ms_channel)
    assert m["type"] == "location"
    assert m["location"] == {"latitude": 52.520008, "longitude": 13.404954, "name": "Pinned Location"}
    assert m["text"] == "Location: 52.520008, 13.404954"


def test_unsupported_attachment(ms_channel, post_webhook):
    receive(post_webhook, "unsupported_attachment")
    m = only_message(ms_channel)
    assert (m["type"], m["unsupported_reason"]) == ("unsupported", "attachment type 'ig_reel' is not supported")


def test_reaction(ms_channel, post_webhook):
    receive(post_webhook, "reaction")
    m = only_message(ms_channel)
    assert m["type"] == "reaction"
    assert m["reaction"] == {
        "message_id": "m_OUTBOUND1",
        "emoji": "\u2764\ufe0f",
        "reaction": "love",
        "action": "react",
    }


def test_echo(ms_channel, post_webhook):
    response = receive(post_webhook, "echo")
    assert response.json() == {"status": "ok", "stored": 0, "messages": 0, "statuses": 0, "ignored": 1}
    assert InboundEvent.objects.count() == 0


def test_delivery(ms_channel, post_webhook):
    receive(post_webhook, "delivery")
    [s] = stored_statuses(ms_channel)
    assert (s["message_id"], s["status"], s["recipient_id"], s["watermark"]) == (
        "m_SENT1",
        "delivered",
        PSID,
        1732540001.0,
    )


def test_read(ms_channel, post_webhook):
    receive(post_webhook, "read")
    [s] = stored_statuses(ms_channel)
    assert (s["message_id"], s["status"], s["recipient_id"], s["watermark"]) == ("", "read", PSID, 1732540005.0)


def test_batch_several_entries(ms_channel, post_webhook):
    response = receive(post_webhook, "batch_several_entries")
    assert [(m["message_id"], m["sender_id"], m["text"]) for m in stored_messages(ms_channel)] == [
        ("m_B1", PSID, "one"),
        ("m_B2", "7011111111111111", "two"),
    ]
    assert response.json()["ignored"] == 1  # the echo
