"""One test per WhatsApp fixture: the real-format payload goes through the real webhook view with a
real signature; the stored normalized messages / status updates are what the pipeline will see."""

from __future__ import annotations

from typing import Any

from channels_app.models import InboundEvent, UnroutedWebhook
from tests.channels_app.conftest import WA_SECRET, fixture_bytes, stored_messages, stored_statuses

SENDER = "972987654321"


def receive(post_webhook: Any, name: str) -> Any:
    response = post_webhook("whatsapp", fixture_bytes("whatsapp", name), WA_SECRET)
    assert response.status_code == 200, response.content
    return response


def only_message(channel: Any) -> dict[str, Any]:
    messages = stored_messages(channel)
    assert len(messages) == 1
    return messages[0]


def media(**values: Any) -> dict[str, Any]:
    base = {
        "kind": "",
        "mime_type": "",
        "media_id": "",
        "url": "",
        "sha256": "",
        "caption": "",
        "filename": "",
        "storage_path": "",
        "size": None,
        "voice": False,
    }
    return {**base, **values}


def test_text(wa_channel, post_webhook):
    response = receive(post_webhook, "text")
    m = only_message(wa_channel)
    assert response.json() == {"status": "ok", "stored": 1, "messages": 1, "statuses": 0, "ignored": 0}
    assert (m["platform"], m["channel_external_id"], m["type"]) == ("whatsapp", "1122334455667", "text")
    assert m["message_id"] == "wamid.HBgMOTcyOTg3NjU0MzIxFQIAEhggQTE="
    assert (m["sender_id"], m["sender_name"]) == (SENDER, "Test Name")
    assert m["text"] == "Hello, what are your opening hours?"
    assert m["timestamp"] == 1697043223.0
    assert m["media"] == [] and m["unsupported_reason"] == ""


def test_reply_with_context(wa_channel, post_webhook):
    receive(post_webhook, "reply_with_context")
    m = only_message(wa_channel)
    assert (m["type"], m["text"], m["context_message_id"]) == ("text", "replied text", "wamid.OUTBOUND1==")


def test_image(wa_channel, post_webhook):
    receive(post_webhook, "image")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("image", "Is this the right part?")
    assert m["media"] == [
        media(
            kind="image",
            mime_type="image/jpeg",
            media_id="1479537139650973",
            url="https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1479537139650973&ext=1697043379&hash=ATs",
            sha256="Z2l0aHViLmNvbS9kYXZpZC1sZXYvcHl3YQ==",
            caption="Is this the right part?",
        )
    ]


def test_audio_voice(wa_channel, post_webhook):
    receive(post_webhook, "audio_voice")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("audio", "")
    assert m["media"] == [
        media(
            kind="audio",
            mime_type="audio/ogg; codecs=opus",
            media_id="2093201377827364",
            sha256="m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
            voice=True,
        )
    ]


def test_video(wa_channel, post_webhook):
    receive(post_webhook, "video")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("video", "caption")
    assert m["media"][0]["kind"] == "video" and m["media"][0]["media_id"] == "765756756"
    assert m["media"][0]["mime_type"] == "video/mp4"
    assert m["raw"]["context"] == {"forwarded": True}


def test_document(wa_channel, post_webhook):
    receive(post_webhook, "document")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("document", "my invoice")
    assert m["media"] == [
        media(
            kind="document",
            mime_type="application/pdf",
            media_id="3359871264101992",
            sha256="grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY=",
            caption="my invoice",
            filename="invoice-2291.pdf",
        )
    ]


def test_sticker(wa_channel, post_webhook):
    receive(post_webhook, "sticker")
    m = only_message(wa_channel)
    assert m["type"] == "sticker"
    assert (m["media"][0]["kind"], m["media"][0]["mime_type"], m["media"][0]["media_id"]) == (
        "sticker",
        "image/webp",
        "1234567890123",
    )


def test_location(wa_channel, post_webhook):
    receive(post_webhook, "location")
    m = only_message(wa_channel)
    assert m["type"] == "location"
    assert m["location"] == {
        "latitude": 37.4611978,
        "longitude": -122.2164385,
        "name": "Facebook HQ",
        "address": "1 Hacker Way, Menlo Park, CA 94025",
        "url": "https://maps.google.com/?cid=2000000000000000000",
    }
    assert m["text"] == "Location: Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025 (37.4611978, -122.2164385)"


def test_contacts(wa_channel, post_webhook):
    receive(post_webhook, "contacts")
    m = only_message(wa_channel)
    assert m["type"] == "contacts"
    assert m["contacts"][0]["name"]["formatted_name"] == "Chandler Bing"
    assert m["text"] == "Shared contacts: Chandler Bing (+1 555-555-5555)"


def test_interactive_button_reply(wa_channel, post_webhook):
    receive(post_webhook, "interactive_button_reply")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("interactive", "Talk to sales")
    assert m["reply"] == {"id": "talk_to_sales", "payload": "talk_to_sales", "title": "Talk to sales"}
    assert m["context_message_id"] == "wamid.OUTBOUND2=="


def test_interactive_list_reply(wa_channel, post_webhook):
    receive(post_webhook, "interactive_list_reply")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("interactive", "Medium")
    assert m["reply"] == {"id": "size_m", "payload": "size_m", "title": "Medium", "description": "Fits 38-40"}


def test_button(wa_channel, post_webhook):
    receive(post_webhook, "button")
    m = only_message(wa_channel)
    assert (m["type"], m["text"]) == ("button", "Stop promotions")
    assert m["reply"] == {"payload": "STOP_PROMOS", "title": "Stop promotions"}


def test_reaction(wa_channel, post_webhook):
    receive(post_webhook, "reaction")
    m = only_message(wa_channel)
    assert m["type"] == "reaction"
    assert m["reaction"] == {"message_id": "wamid.OUTBOUND4==", "emoji": "\U0001f44d"}


def test_unsupported(wa_channel, post_webhook):
    receive(post_webhook, "unsupported")
    m = only_message(wa_channel)
    assert m["type"] == "unsupported"
    assert m["unsupported_reason"] == (
        "message type 'unsupported': 131051 Message type unknown: Message type is currently not supported."
    )


def test_username_without_phone(wa_channel, post_webhook):
    receive(post_webhook, "username_without_phone")
    m = only_message(wa_channel)
    assert (m["sender_id"], m["sender_name"], m["text"]) == ("US.99887766554433221100", "Ana", "hola")


def test_status_sent(wa_channel, post_webhook):
    receive(post_webhook, "status_sent")
    [s] = stored_statuses(wa_channel)
    assert (s["message_id"], s["status"], s["recipient_id"], s["timestamp"]) == (
        "wamid.SENT1==",
        "sent",
        SENDER,
        1698266945.0,
    )
    assert s["error"] is None
    assert stored_messages(wa_channel) == []


def test_status_delivered(wa_channel, post_webhook):
    receive(post_webhook, "status_delivered")
    [s] = stored_statuses(wa_channel)
    assert (s["message_id"], s["status"]) == ("wamid.SENT1==", "delivered")


def test_status_read(wa_channel, post_webhook):
    receive(post_webhook, "status_read")
    [s] = stored_statuses(wa_channel)
    assert (s["message_id"], s["status"]) == ("wamid.SENT1==", "read")


def test_status_failed(wa_channel, post_webhook):
    receive(post_webhook, "status_failed")
    [s] = stored_statuses(wa_channel)
    assert s["status"] == "failed"
    assert s["error"] == {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "details": "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    }


def test_batch_several_messages_and_users(wa_channel, post_webhook):
    response = receive(post_webhook, "batch_several_messages_and_users")
    messages = stored_messages(wa_channel)
    assert [(m["message_id"], m["sender_id"], m["sender_name"], m["text"]) for m in messages] == [
        ("wamid.BATCH1==", "15551230001", "Dana", "first"),
        ("wamid.BATCH2==", "15551230002", "Eli", "second"),
        ("wamid.BATCH3==", "15551230001", "Dana", "third"),
    ]
    assert [(s["message_id"], s["status"]) for s in stored_statuses(wa_channel)] == [("wamid.SENT9==", "delivered")]
    assert response.json()["stored"] == 4


def test_account_update(wa_channel, post_webhook):
    """Other fields carry no phone_number_id: kept for inspection, never processed."""
    response = receive(post_webhook, "account_update")
    assert response.json()["status"] == "unrouted"
    assert InboundEvent.objects.count() == 0
    kept = UnroutedWebhook.objects.get()
    assert (kept.platform, kept.reason, kept.external_ids) == ("whatsapp", "no routable id in payload", [])
    assert '"account_update"' in kept.body
