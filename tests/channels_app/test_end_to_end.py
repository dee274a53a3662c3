"""Through a real Celery worker: media lands in the tenant's storage; a redelivered message is
stored once and answered once; statuses reach the outbound message.

``graph`` comes before ``worker`` in every signature so that the worker stops (finishing its
in-flight turns) before the fake Graph API and its settings go away.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from channels_app.models import InboundEvent
from tests.channels_app.conftest import MS_SECRET, WA_SECRET, fixture_bytes, fresh_fixture_bytes
from tests.conftest import wait_until


@pytest.fixture
def worker(live_worker):
    """The live worker, drained at the end: in-flight turns finish before it stops and the test
    database is flushed (the thread pool does not wait for them)."""
    yield live_worker
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not InboundEvent.objects.filter(kind="message", status="pending").exists(), timeout=20)
    time.sleep(0.5)


JPEG = b"\xff\xd8\xff\xe0" + b"fake-jpeg-bytes" * 10
PDF = b"%PDF-1.4 fake invoice"


def test_whatsapp_image_is_downloaded_into_the_tenants_storage(
    graph, worker, wa_channel, post_webhook, settings, tmp_path
):
    settings.MEDIA_ROOT = str(tmp_path)
    graph.media["1479537139650973"] = (JPEG, "image/jpeg")
    assert post_webhook("whatsapp", fixture_bytes("whatsapp", "image"), WA_SECRET).status_code == 200
    row = InboundEvent.objects.get(kind="message")

    def stored_path() -> str:
        row.refresh_from_db()
        return row.normalized["media"][0]["storage_path"]

    path = wait_until(stored_path, timeout=20)
    assert path.startswith(f"{wa_channel.tenant_id}/media/{wa_channel.pk}/")
    assert path.endswith(".jpg")
    assert (Path(tmp_path) / path).read_bytes() == JPEG
    assert row.normalized["media"][0]["size"] == len(JPEG)
    assert row.normalized["media"][0]["caption"] == "Is this the right part?"
    # The lookup carried the bearer token and the phone number id; so did the download.
    lookup = next(r for r in graph.requests if r["path"] == "/v25.0/1479537139650973")
    assert lookup["authorization"].startswith("Bearer ") and lookup["query"] == "phone_number_id=1122334455667"
    download = next(r for r in graph.requests if r["path"] == "/download/1479537139650973")
    assert download["authorization"].startswith("Bearer ")


def test_messenger_file_is_downloaded_from_its_url(graph, worker, ms_channel, post_webhook, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    graph.media["terms.pdf"] = (PDF, "application/pdf")
    payload = json.loads(fixture_bytes("messenger", "attachments_file_and_audio"))
    attachments = payload["entry"][0]["messaging"][0]["message"]["attachments"]
    attachments[0]["payload"]["url"] = f"{graph.url}/cdn/terms.pdf"
    del attachments[1]
    assert post_webhook("messenger", json.dumps(payload).encode(), MS_SECRET).status_code == 200
    row = InboundEvent.objects.get(kind="message")

    def stored() -> dict:
        row.refresh_from_db()
        return row.normalized["media"][0]["storage_path"] and row.normalized["media"][0]

    media = wait_until(stored, timeout=20)
    assert media["mime_type"] == "application/pdf" and media["storage_path"].endswith(".pdf")
    assert (Path(tmp_path) / media["storage_path"]).read_bytes() == PDF
    cdn = next(r for r in graph.requests if r["path"] == "/cdn/terms.pdf")
    assert cdn["authorization"] == ""  # CDN links are fetched without the page token


def test_media_that_cannot_be_fetched_is_recorded_and_the_message_goes_on(
    graph, worker, wa_channel, post_webhook, settings, tmp_path
):
    settings.MEDIA_ROOT = str(tmp_path)  # graph.media is empty: the lookup answers Graph's 404 error
    assert post_webhook("whatsapp", fixture_bytes("whatsapp", "document"), WA_SECRET).status_code == 200
    row = InboundEvent.objects.get(kind="message")

    def errors() -> list:
        row.refresh_from_db()
        return row.normalized["raw"].get("_media_errors")

    [error] = wait_until(errors, timeout=20)
    assert error["index"] == 0 and error["code"] == 100
    assert row.normalized["media"][0]["storage_path"] == ""


def test_messenger_sender_name_is_looked_up_once_for_the_contact(graph, worker, ms_channel, post_webhook):
    graph.profiles["6944325612345678"] = {"first_name": "Jane", "last_name": "Doe"}

    def names() -> list:
        found = [row.normalized["sender_name"] for row in InboundEvent.objects.filter(kind="message").order_by("id")]
        return found if all(found) else None

    assert post_webhook("messenger", fixture_bytes("messenger", "text"), MS_SECRET).status_code == 200
    assert wait_until(names, timeout=20) == ["Jane Doe"]
    assert post_webhook("messenger", fixture_bytes("messenger", "quick_reply"), MS_SECRET).status_code == 200
    assert wait_until(lambda: (n := names()) and len(n) == 2 and n, timeout=20) == ["Jane Doe", "Jane Doe"]
    lookups = [r for r in graph.requests if r["path"] == "/v25.0/6944325612345678"]
    assert len(lookups) == 1  # the second message used the cached name
    assert lookups[0]["query"] == "fields=first_name%2Clast_name"
    assert lookups[0]["authorization"].startswith("Bearer ")


def test_redelivered_message_is_stored_once_and_answered_once(graph, worker, wa_channel, post_webhook):
    body = fresh_fixture_bytes("whatsapp", "text")
    for _ in range(3):
        assert post_webhook("whatsapp", body, WA_SECRET).status_code == 200

    def replies() -> list:
        return [r for r in graph.posts() if r["json"].get("type") == "text"]

    wait_until(replies, timeout=30)
    # A later message of the same contact: its turn comes after any other turn for the first one.
    later = body.replace(b"wamid.HBgMOTcyOTg3NjU0MzIxFQIAEhggQTE=", b"wamid.LATER1==").replace(
        b"1697043223", b"1697043283"
    )
    assert post_webhook("whatsapp", later, WA_SECRET).status_code == 200
    wait_until(lambda: len(replies()) >= 2, timeout=30)
    assert [reply["json"]["to"] for reply in replies()] == ["972987654321"] * 2
    assert InboundEvent.objects.filter(kind="message").count() == 2


def test_status_webhook_reaches_the_outbound_message_through_the_worker(worker, wa_channel, post_webhook):
    from conversations.models import Contact, Conversation, Message

    contact = Contact.objects.create(tenant=wa_channel.tenant, channel=wa_channel, external_id="972987654321")
    conversation = Conversation.objects.create(tenant=wa_channel.tenant, channel=wa_channel, contact=contact)
    message = Message.objects.create(
        tenant=wa_channel.tenant,
        conversation=conversation,
        channel=wa_channel,
        direction="out",
        sender="assistant",
        content="reply",
        platform_message_id="wamid.SENT1==",
        status="sent",
    )
    assert post_webhook("whatsapp", fixture_bytes("whatsapp", "status_read"), WA_SECRET).status_code == 200

    def read() -> bool:
        message.refresh_from_db()
        return message.status == "read"

    wait_until(read, timeout=20)
    assert InboundEvent.objects.get(kind="status").status == "processed"


def test_a_large_batch_post_is_handed_on_through_one_dispatch_task(graph, worker, wa_channel, post_webhook, settings):
    """Rows stored by one POST are published together: more than DIRECT_MAX of them as one task that a
    worker fans out (the web process pays for one publish), each row's task received once."""
    from celery import signals

    from channels_app.inbound import DIRECT_MAX

    # Each message's task counted once: no burst debounce, whose turn asks again later by design.
    settings.TURN_DEBOUNCE_SECONDS = 0
    payload = json.loads(fresh_fixture_bytes("whatsapp", "text"))
    value = payload["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    count = DIRECT_MAX + 2
    value["messages"] = [
        {**template, "id": f"wamid.batch{n}", "from": f"97298765{n:04d}", "text": {"body": f"question {n}"}}
        for n in range(count)
    ]
    received: list[str] = []

    def on_received(request=None, **_):
        received.append(request.name)

    signals.task_received.connect(on_received, weak=False)
    try:
        assert post_webhook("whatsapp", json.dumps(payload).encode(), WA_SECRET).json()["stored"] == count
        wait_until(lambda: received.count("conversations.handle_inbound_message") >= count, timeout=30)
        # A later POST's task is received after any duplicate hand-off of the batch (one FIFO queue).
        assert post_webhook("whatsapp", fixture_bytes("whatsapp", "text"), WA_SECRET).json()["stored"] == 1
        wait_until(lambda: received.count("conversations.handle_inbound_message") >= count + 1, timeout=30)
    finally:
        signals.task_received.disconnect(on_received)
    assert received.count("channels_app.dispatch_inbound") == 1
    assert received.count("conversations.handle_inbound_message") == count + 1


def test_messages_arriving_one_by_one_are_published_one_task_each(graph, worker, wa_channel, post_webhook, settings):
    """At a rate a turn worker serves (not a flood), each message's task is published as it commits:
    no wait to coalesce and no fan-out hop through a dispatch task, which would add to every reply."""
    from celery import signals

    settings.TURN_DEBOUNCE_SECONDS = 0
    received: list[str] = []

    def on_received(request=None, **_):
        received.append(request.name)

    signals.task_received.connect(on_received, weak=False)
    try:
        for n in range(6):  # within ~50 ms of each other: "busy" for the publisher's old rule
            body = fresh_fixture_bytes("whatsapp", "text").replace(b'"wamid.', f'"wamid.oneby{n}'.encode())
            assert post_webhook("whatsapp", body, WA_SECRET).json()["stored"] == 1
        wait_until(lambda: received.count("conversations.handle_inbound_message") >= 6, timeout=30)
    finally:
        signals.task_received.disconnect(on_received)
    assert received.count("channels_app.dispatch_inbound") == 0


def test_a_message_whose_task_was_lost_is_answered_after_the_sweep(graph, worker, wa_channel, settings):
    """The broker lost the task (or a worker died with it): the row is still pending, and the beat
    sweep enqueues it again once it is older than INBOUND_REQUEUE_AFTER_SECONDS. Nothing is dropped."""
    from datetime import timedelta

    from django.utils import timezone

    from channels_app import inbound
    from channels_app.adapters.whatsapp import WhatsAppAdapter

    parsed = WhatsAppAdapter().parse(json.loads(fresh_fixture_bytes("whatsapp", "text")))
    # Stored as the webhook would, but its task never reaches a worker.
    lost = InboundEvent.objects.create(
        tenant_id=wa_channel.tenant_id,
        channel=wa_channel,
        kind="message",
        dedupe_key=parsed.messages[0].message_id,
        sender_external_id=parsed.messages[0].sender_id,
        normalized=inbound._message_dict(parsed.messages[0]),
        status="pending",
    )
    InboundEvent.objects.filter(pk=lost.pk).update(
        received_at=timezone.now() - timedelta(seconds=settings.INBOUND_REQUEUE_AFTER_SECONDS + 5)
    )
    fresh = InboundEvent.objects.create(
        tenant_id=wa_channel.tenant_id,
        channel=wa_channel,
        kind="message",
        dedupe_key="wamid.still-young",
        sender_external_id="15550009999",
        normalized={**inbound._message_dict(parsed.messages[0]), "message_id": "wamid.still-young"},
        status="pending",
    )

    assert inbound.requeue_stale_pending() == 1  # only the old row: a young one may still be in flight

    wait_until(lambda: InboundEvent.objects.get(pk=lost.pk).status == "processed", timeout=30)
    assert any(p["json"].get("type") == "text" for p in graph.posts())  # the user got an answer
    fresh.refresh_from_db()
    assert fresh.status == "pending"
    fresh.delete()
