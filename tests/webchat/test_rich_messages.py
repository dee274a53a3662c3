"""Files and options to tap on web chat: an agent's (or the bot's) file reaches the visitor over the
real Redis channel layer with a URL only that visitor can open (from the tenant's own storage); options
arrive as signed buttons, and a tap comes back through the consumer as an inbound message carrying its
payload as a WhatsApp button reply does; the session history has both."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from channels_app import webchat_media
from channels_app.adapters.base import OutboundMedia
from channels_app.services import outbound_media
from conversations.models import Contact, Conversation
from tests.webchat.conftest import ORIGIN
from tests.webchat.test_consumer import connected, end_thread_connections, inbound_rows, token_for  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def session(channel, visitor_token: str = "") -> dict:
    response = Client().post(
        "/api/webchat/sessions/",
        {"widget_key": channel.external_id, "visitor_token": visitor_token},
        content_type="application/json",
        HTTP_ORIGIN=ORIGIN,
    )
    assert response.status_code == 201, response.content
    return response.json()


def conversation_of(channel, visitor_id: str) -> Conversation:
    contact = Contact.objects.create(tenant_id=channel.tenant_id, channel=channel, external_id=visitor_id)
    return Conversation.objects.create(tenant_id=channel.tenant_id, channel=channel, contact=contact)


def fetch(url: str, key: str | None) -> object:
    query = {"key": key} if key is not None else {}
    return Client().get(urlparse(url).path, query)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def test_an_agents_pdf_reaches_the_visitor_and_opens_only_with_that_visitors_key(
    webchat_channel, tenant_api, make_webchat_channel, other_tenant
):
    visitor = session(webchat_channel)
    conversation = conversation_of(webchat_channel, visitor["visitor_id"])

    async def scenario():
        socket = await connected(visitor["token"])
        response = await sync_to_async(tenant_api.post, thread_sensitive=False)(
            f"/api/tenants/{webchat_channel.tenant_id}/conversations/{conversation.pk}/media/",
            {"file": SimpleUploadedFile("invoice-42.pdf", PDF, content_type="application/pdf"), "caption": "Your invoice"},
            format="multipart",
        )  # fmt: skip
        frame = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return response, frame

    response, frame = async_to_sync(scenario)()

    assert response.status_code == 201, response.content
    # Live, as after a reload: the agent's message, not the assistant's.
    assert (frame["type"], frame["role"], frame["text"]) == ("message", "agent", "Your invoice")
    assert frame["created_at"]
    # Kept once in the tenant's storage (the transcript's copy is the one the visitor gets).
    _, stored = default_storage.listdir(f"{webchat_channel.tenant_id}/media/{webchat_channel.pk}")
    assert len(stored) == 1
    [item] = frame["media"]
    assert {k: item[k] for k in ("kind", "mime_type", "filename", "size", "caption")} == {
        "kind": "document", "mime_type": "application/pdf", "filename": "invoice-42.pdf", "size": len(PDF),
        "caption": "Your invoice",
    }  # fmt: skip
    assert item["url"].startswith("/api/webchat/media/")

    # The visitor it was sent to downloads it (as an attachment, never rendered in the page).
    opened = fetch(item["url"], visitor["media_key"])
    assert opened.status_code == 200
    assert body_of(opened) == PDF
    assert opened["Content-Disposition"] == 'attachment; filename="invoice-42.pdf"'
    assert opened["X-Content-Type-Options"] == "nosniff"

    # Another visitor of the same widget, a visitor of another tenant's widget, no key: refused.
    other_visitor = session(webchat_channel)
    other_tenants_visitor = session(make_webchat_channel(other_tenant))
    assert fetch(item["url"], other_visitor["media_key"]).status_code == 403
    assert fetch(item["url"], other_tenants_visitor["media_key"]).status_code == 403
    assert fetch(item["url"], None).status_code == 403
    # A ref we did not sign names nothing.
    ref = urlparse(item["url"]).path.split("/")[-2]
    assert fetch(f"/api/webchat/media/{ref[:-2]}xx/", visitor["media_key"]).status_code == 404

    # Back later: the history has the file, with a fresh URL that works.
    again = session(webchat_channel, visitor["visitor_token"])
    [sent] = [m for m in again["history"] if m.get("media")]
    assert (sent["role"], sent["text"], sent["id"]) == ("agent", "Your invoice", frame["id"])
    assert sent["media"][0]["filename"] == "invoice-42.pdf"
    assert body_of(fetch(sent["media"][0]["url"], again["media_key"])) == PDF


def test_a_file_of_another_tenant_is_never_served_even_if_named(webchat_channel, make_webchat_channel, other_tenant):
    """A stored path of tenant B handed to a send on tenant A's widget (say, by a tenant function)
    makes a URL that serves nothing: files are served from the widget's tenant's media folder only."""
    from django.core.files.base import ContentFile

    other_channel = make_webchat_channel(other_tenant)
    secret = default_storage.save(f"{other_tenant.pk}/media/{other_channel.pk}/out-secret.pdf", ContentFile(PDF))
    visitor = session(webchat_channel)

    async def scenario():
        socket = await connected(visitor["token"])
        await sync_to_async(outbound_media.send_media, thread_sensitive=False)(
            channel=webchat_channel,
            recipient_id=visitor["visitor_id"],
            media=OutboundMedia(kind="document", media_id=secret, mime_type="application/pdf", filename="x.pdf"),
        )
        frame = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return frame

    frame = async_to_sync(scenario)()

    assert fetch(frame["media"][0]["url"], visitor["media_key"]).status_code == 404


def test_an_image_from_the_bot_is_kept_in_the_tenants_storage_and_shown_inline(webchat_channel, tenant):
    visitor = session(webchat_channel)

    async def scenario():
        socket = await connected(visitor["token"])
        result = await sync_to_async(outbound_media.send_media, thread_sensitive=False)(
            channel=webchat_channel,
            recipient_id=visitor["visitor_id"],
            media=OutboundMedia(kind="image", content=PNG, mime_type="image/png", filename="map.png"),
        )
        frame = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return result, frame

    result, frame = async_to_sync(scenario)()

    assert result.platform_message_ids == [frame["id"]]
    [item] = frame["media"]
    assert (item["kind"], item["filename"], item["size"]) == ("image", "map.png", len(PNG))
    opened = fetch(item["url"], visitor["media_key"])
    assert (opened.status_code, opened["Content-Type"], body_of(opened)) == (200, "image/png", PNG)
    assert "attachment" not in opened.get("Content-Disposition", "")
    stored = webchat_media.media_ref_open(urlparse(item["url"]).path.split("/")[-2])
    assert stored is not None and stored.storage_path.startswith(f"{tenant.pk}/media/{webchat_channel.pk}/")


def test_options_reach_the_visitor_and_a_tap_comes_back_with_its_payload(webchat_channel, tenant_api):
    visitor = session(webchat_channel)
    conversation = conversation_of(webchat_channel, visitor["visitor_id"])
    options = [{"id": "slot_am", "title": "Morning"}, {"id": "slot_pm", "title": "Afternoon", "description": "2-6 pm"}]

    async def scenario():
        socket = await connected(visitor["token"])
        response = await sync_to_async(tenant_api.post, thread_sensitive=False)(
            f"/api/tenants/{webchat_channel.tenant_id}/conversations/{conversation.pk}/choices/",
            {"body": "When should we deliver?", "options": options, "footer": "Acme"},
            format="json",
        )
        offered = await socket.receive_json_from(timeout=5)
        token = offered["choices"]["options"][1]["token"]
        await socket.send_json_to({"type": "choice", "client_message_id": "c_tap0000001", "choice": token})
        ack = await socket.receive_json_from(timeout=5)
        echo = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return response, offered, ack, echo

    response, offered, ack, echo = async_to_sync(scenario)()

    assert response.status_code == 201, response.content
    assert (offered["role"], offered["text"]) == ("agent", "When should we deliver?")
    assert offered["choices"]["footer"] == "Acme"
    assert [(o["title"], o["description"]) for o in offered["choices"]["options"]] == [
        ("Morning", ""), ("Afternoon", "2-6 pm")
    ]  # fmt: skip
    assert "slot_pm" not in str(offered["choices"]["options"][0])
    assert ack == {"type": "ack", "client_message_id": "c_tap0000001", "status": "stored"}
    assert (echo["role"], echo["text"], echo["reply_to"]) == ("user", "Afternoon", offered["id"])  # other tabs
    [row] = inbound_rows(webchat_channel)
    tap = row.normalized
    assert (tap["type"], tap["text"], tap["context_message_id"]) == ("interactive", "Afternoon", offered["id"])
    assert tap["reply"] == {"id": "slot_pm", "payload": "slot_pm", "title": "Afternoon"}  # as WhatsApp's

    # Back later: the options are in the history, answered (the widget shows them switched off).
    again = session(webchat_channel, visitor["visitor_token"])
    [asked] = [m for m in again["history"] if m.get("choices")]
    assert (asked["id"], asked["text"], asked["choices"]["answered"]) == (
        offered["id"],
        "When should we deliver?",
        True,
    )
    assert [m["text"] for m in again["history"] if m["role"] == "user"] == ["Afternoon"]


def test_a_tap_with_another_visitors_or_a_made_up_option_is_refused(webchat_channel, adapter):
    from channels_app.adapters.base import Choice, Choices

    alice, bob = session(webchat_channel), session(webchat_channel)

    async def scenario():
        socket_a = await connected(alice["token"])
        await sync_to_async(adapter.send_choices, thread_sensitive=False)(
            channel_external_id=webchat_channel.external_id,
            recipient_id=alice["visitor_id"],
            choices=Choices(body="Refund or exchange?", options=[Choice(id="refund", title="Refund")]),
            credentials={},
        )
        offered = await socket_a.receive_json_from(timeout=5)
        await socket_a.disconnect()
        socket_b = await connected(bob["token"])
        refusals = []
        for n, forged in enumerate([offered["choices"]["options"][0]["token"], "refund", {"id": "refund"}]):
            await socket_b.send_json_to({"type": "choice", "client_message_id": f"c_forged000{n}", "choice": forged})
            refusals.append(await socket_b.receive_json_from(timeout=5))
        await socket_b.disconnect()
        return refusals

    refusals = async_to_sync(scenario)()

    assert [(r["type"], r["code"]) for r in refusals] == [("error", "invalid_choice")] * 3
    assert inbound_rows(webchat_channel) == []


def test_options_web_chat_cannot_show_are_refused_before_sending(webchat_channel, adapter):
    from channels_app.adapters.base import Choice, Choices, InvalidChoices

    too_many = Choices(body="Pick one", options=[Choice(id=f"o{n}", title=f"Option {n}") for n in range(11)])
    with pytest.raises(InvalidChoices, match="at most 10"):
        adapter.check_choices(too_many)
    with pytest.raises(InvalidChoices, match="titles"):
        adapter.check_choices(Choices(body="Pick one", options=[Choice(id="x", title="")]))


def test_the_history_shows_a_file_the_bot_sent_by_link_and_its_options(webchat_channel):
    """As conversations.pipeline.function_sends stores a tenant function's sends (sender assistant,
    ``payload.media`` with an https link, ``payload.choices``)."""
    from conversations.models import Message

    visitor = session(webchat_channel)
    conversation = conversation_of(webchat_channel, visitor["visitor_id"])
    common = {
        "tenant_id": webchat_channel.tenant_id, "conversation": conversation, "channel_id": webchat_channel.pk,
        "direction": Message.Direction.OUTBOUND, "sender": Message.Sender.ASSISTANT, "status": Message.Status.SENT,
    }  # fmt: skip
    Message.objects.create(
        **common, kind="image", content="", platform_message_id="wc_map",
        payload={"media": {"kind": "image", "link": "https://cdn.example/map.png", "mime_type": "image/png"}},
    )  # fmt: skip
    Message.objects.create(
        **common, kind="choices", content="1. Yes\n2. No", platform_message_id="wc_ask",
        payload={"choices": {"body": "Is this your street?", "options": [{"id": "y", "title": "Yes"}, {"id": "n", "title": "No"}]}},
    )  # fmt: skip

    history = session(webchat_channel, visitor["visitor_token"])["history"]

    assert [(m["id"], m["text"]) for m in history] == [("wc_map", ""), ("wc_ask", "Is this your street?")]
    assert history[0]["media"][0]["url"] == "https://cdn.example/map.png"
    assert [o["title"] for o in history[1]["choices"]["options"]] == ["Yes", "No"]
    assert "answered" not in history[1]["choices"]
    # Each option's token answers only this visitor on this widget.
    token = history[1]["choices"]["options"][0]["token"]
    tap = webchat_media.choice_open(token, widget_key=webchat_channel.external_id, visitor_id=visitor["visitor_id"])
    assert (tap.message_id, tap.option_id, tap.title) == ("wc_ask", "y", "Yes")
    assert webchat_media.choice_open(token, widget_key=webchat_channel.external_id, visitor_id="v_" + "b" * 22) is None
