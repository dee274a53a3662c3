"""Media out against the local Graph API server: a file is uploaded to the platform's media endpoint
(WhatsApp /{phone-number-id}/media, Messenger /{page-id}/message_attachments) and sent by id, or sent
by link; types and sizes outside Meta's limits, and the closed window, are refused before any call."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from channels_app.adapters.base import InvalidMedia, OutboundMedia
from channels_app.services import outbound_media
from conversations.models import Conversation, Message
from tests.channels_app.conftest import MS_PAGE_ID, WA_PHONE_NUMBER_ID, WA_TOKEN, conversation_with, inbound_from

WA_USER = "972987654321"
MS_USER = "6944325612345678"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(autouse=True)
def _files_in_tmp(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path)


def send_file(api: Any, conversation: Conversation, **fields: Any) -> Any:
    url = f"/api/tenants/{conversation.tenant_id}/conversations/{conversation.pk}/media/"
    return api.post(url, fields, format="multipart")


def test_an_uploaded_image_goes_to_whatsapps_media_endpoint_then_by_id(wa_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    conversation = conversation_with(wa_channel, WA_USER)

    response = send_file(
        tenant_api,
        conversation,
        file=SimpleUploadedFile("receipt.png", PNG, content_type="image/png"),
        caption="Your receipt",
    )

    assert response.status_code == 201, response.content
    upload, message_post = graph.posts("")
    assert upload["path"] == f"/v25.0/{WA_PHONE_NUMBER_ID}/media"
    assert upload["authorization"] == f"Bearer {WA_TOKEN}"
    assert upload["form"] == {
        "messaging_product": "whatsapp",
        "type": "image/png",
        "file": ("receipt.png", "image/png", PNG),
    }
    assert message_post["json"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": WA_USER,
        "type": "image",
        "image": {"id": "media1", "caption": "Your receipt"},
    }
    message = Message.objects.get(conversation=conversation)
    assert (message.kind, message.content, message.status) == ("image", "Your receipt", "sent")
    with default_storage.open(message.payload["media"]["storage_path"]) as kept:
        assert kept.read() == PNG  # kept for the transcript

    # The agents see it in the inbox like a file the end user sent, and can open it.
    from django.contrib.auth import get_user_model
    from django.test import Client

    from tenants.models import Membership

    amy = get_user_model().objects.create_user(username="amy", password="pw-amy-123456", is_staff=True)
    Membership.objects.create(tenant=wa_channel.tenant, user=amy, role=Membership.Role.AGENT)
    agent = Client()
    agent.force_login(amy)
    query = f"?tenant={wa_channel.tenant_id}"
    timeline = agent.get(f"/inbox/api/conversations/{conversation.pk}/{query}").json()["timeline"]
    assert [m["media"] for m in timeline if m["id"] == message.pk] == [
        [{"index": 0, "kind": "image", "mime_type": "image/png", "filename": "receipt.png", "caption": "Your receipt",
          "stored": True}]
    ]  # fmt: skip
    opened = agent.get(f"/inbox/api/conversations/{conversation.pk}/media/{message.pk}/0/{query}")
    assert (opened.status_code, b"".join(opened.streaming_content)) == (200, PNG)


def test_a_document_by_link_keeps_its_filename(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    media = OutboundMedia(kind="document", link="https://files.example.com/menu.pdf", filename="menu.pdf")

    outbound_media.send_media(channel=wa_channel, recipient_id=WA_USER, media=media)

    [post] = graph.posts()
    assert post["json"]["document"] == {"link": "https://files.example.com/menu.pdf", "filename": "menu.pdf"}


def test_messenger_uploads_an_attachment_and_sends_the_caption_as_text(ms_channel, graph):
    inbound_from(ms_channel, MS_USER, hours_ago=1)
    media = OutboundMedia(kind="image", content=PNG, mime_type="image/png", filename="r.png", caption="Receipt")

    result = outbound_media.send_media(channel=ms_channel, recipient_id=MS_USER, media=media)

    upload, attachment, caption = graph.posts("")
    assert upload["path"] == f"/v25.0/{MS_PAGE_ID}/message_attachments"
    assert upload["form"]["message"] == '{"attachment": {"type": "image", "payload": {"is_reusable": true}}}'
    assert upload["form"]["filedata"] == ("r.png", "image/png", PNG)
    assert attachment["json"]["message"] == {"attachment": {"type": "image", "payload": {"attachment_id": "att1"}}}
    assert caption["json"]["message"] == {"text": "Receipt"}
    assert len(result.platform_message_ids) == 2


def test_a_captioned_file_an_agent_sends_on_messenger_keeps_both_ids_so_either_status_finds_it(
    ms_channel, graph, tenant_api
):
    inbound_from(ms_channel, MS_USER, hours_ago=1)
    conversation = conversation_with(ms_channel, MS_USER)

    response = send_file(
        tenant_api, conversation, file=SimpleUploadedFile("r.png", PNG, content_type="image/png"), caption="Receipt"
    )

    assert response.status_code == 201, response.content
    message = Message.objects.get(conversation=conversation)
    attachment_id, caption_id = message.payload["platform_message_ids"]
    assert message.platform_message_id == attachment_id and caption_id != attachment_id
    assert message.payload["media"]["caption"] == "Receipt"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"file": ("big.png", b"\x89PNG" + b"0" * (5 * 1024 * 1024), "image/png")}, "at most 5120 KB"),
        ({"file": ("anim.gif", b"GIF89a", "image/gif")}, "not 'image/gif'"),
        ({"link": "http://plain.example.com/a.jpg", "kind": "image"}, "https://"),
        ({"file": ("voice.ogg", b"OggS", "audio/ogg"), "caption": "listen"}, "captions go with"),
    ],
)
def test_files_whatsapp_does_not_take_are_refused_before_any_call(wa_channel, graph, tenant_api, fields, expected):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    conversation = conversation_with(wa_channel, WA_USER)
    if "file" in fields:
        name, content, mime = fields["file"]
        fields = {**fields, "file": SimpleUploadedFile(name, content, content_type=mime)}

    response = send_file(tenant_api, conversation, **fields)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_media"
    assert expected in response.json()["error"]["message"]
    assert graph.requests == []
    assert not Message.objects.filter(conversation=conversation).exists()


def test_a_file_outside_the_window_is_refused(wa_channel, graph, tenant_api):
    inbound_from(wa_channel, WA_USER, hours_ago=25)
    response = send_file(
        tenant_api,
        conversation_with(wa_channel, WA_USER),
        file=SimpleUploadedFile("r.png", PNG, content_type="image/png"),
    )
    assert response.status_code == 409
    assert graph.requests == []


def test_a_sticker_that_is_not_webp_is_refused(wa_channel, graph):
    inbound_from(wa_channel, WA_USER, hours_ago=1)
    media = OutboundMedia(kind="sticker", content=PNG, mime_type="image/png")
    with pytest.raises(InvalidMedia, match="image/webp"):
        outbound_media.send_media(channel=wa_channel, recipient_id=WA_USER, media=media)
    assert graph.requests == []
