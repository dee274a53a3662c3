"""Delivery statuses update the matching outbound message: forward only, failures with Meta's error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from channels_app import services
from channels_app.models import InboundEvent
from conversations.models import Contact, Conversation, Message
from events.models import Event
from tests.channels_app.conftest import MS_SECRET, WA_SECRET, fixture_bytes


def outbound(channel, platform_id: str, *, contact_id: str = "972987654321", status: str = "sent", **extra):
    contact, _ = Contact.objects.get_or_create(tenant=channel.tenant, channel=channel, external_id=contact_id)
    conversation = Conversation.objects.filter(tenant=channel.tenant, contact=contact).first()
    if conversation is None:
        conversation = Conversation.objects.create(tenant=channel.tenant, channel=channel, contact=contact)
    return Message.objects.create(
        tenant=channel.tenant,
        conversation=conversation,
        channel=channel,
        direction="out",
        sender="assistant",
        content="reply",
        platform_message_id=platform_id,
        status=status,
        **extra,
    )


def apply_fixture(post_webhook, channel, platform: str, name: str, secret: str) -> list[str]:
    assert post_webhook(platform, fixture_bytes(platform, name), secret).status_code == 200
    rows = InboundEvent.objects.for_tenant(channel.tenant).filter(kind="status", status="pending").order_by("id")
    return [services.apply_status_update(inbound_id=row.pk) for row in rows]


def test_delivered_then_read_moves_the_message_forward(wa_channel, post_webhook):
    message = outbound(wa_channel, "wamid.SENT1==")
    assert apply_fixture(post_webhook, wa_channel, "whatsapp", "status_delivered", WA_SECRET) == ["applied"]
    message.refresh_from_db()
    assert message.status == "delivered"
    assert apply_fixture(post_webhook, wa_channel, "whatsapp", "status_read", WA_SECRET) == ["applied"]
    message.refresh_from_db()
    assert message.status == "read"
    events = Event.objects.for_tenant(wa_channel.tenant).filter(type="message.status").order_by("id")
    assert [e.payload["status"] for e in events] == ["delivered", "read"]
    assert events[0].payload["platform_message_id"] == "wamid.SENT1=="


def test_read_is_never_downgraded_by_a_late_delivered(wa_channel, post_webhook):
    message = outbound(wa_channel, "wamid.SENT1==", status="read")
    assert apply_fixture(post_webhook, wa_channel, "whatsapp", "status_delivered", WA_SECRET) == ["unchanged"]
    message.refresh_from_db()
    assert message.status == "read"
    assert InboundEvent.objects.get(kind="status").status == "processed"


def test_failed_status_records_metas_error_and_emits_message_failed(wa_channel, post_webhook):
    message = outbound(wa_channel, "wamid.SENT1==")
    assert apply_fixture(post_webhook, wa_channel, "whatsapp", "status_failed", WA_SECRET) == ["applied"]
    message.refresh_from_db()
    assert message.status == "failed"
    assert message.error["code"] == 131047
    assert message.error["reason"] == "outside_window"
    assert message.error["title"] == "Re-engagement message"
    event = Event.objects.for_tenant(wa_channel.tenant).get(type="message.failed")
    assert event.payload["error"]["code"] == 131047


def test_status_for_an_unknown_message_waits_then_is_recorded_as_ignored(wa_channel, post_webhook):
    post_webhook("whatsapp", fixture_bytes("whatsapp", "status_sent"), WA_SECRET)
    row = InboundEvent.objects.get(kind="status")
    with pytest.raises(services.StatusTargetNotFound):
        services.apply_status_update(inbound_id=row.pk)
    assert services.apply_status_update(inbound_id=row.pk, final_attempt=True) == "ignored"
    row.refresh_from_db()
    assert (row.status, row.error, row.attempts) == ("ignored", "no outbound message with this platform id", 2)


def test_status_for_a_later_part_of_a_split_reply_matches_by_payload(wa_channel, post_webhook):
    message = outbound(
        wa_channel, "wamid.FIRST==", payload={"platform_message_ids": ["wamid.FIRST==", "wamid.SENT1=="]}
    )
    assert apply_fixture(post_webhook, wa_channel, "whatsapp", "status_delivered", WA_SECRET) == ["applied"]
    message.refresh_from_db()
    assert message.status == "delivered"


def test_status_update_is_applied_once(wa_channel, post_webhook):
    outbound(wa_channel, "wamid.SENT1==")
    post_webhook("whatsapp", fixture_bytes("whatsapp", "status_delivered"), WA_SECRET)
    row = InboundEvent.objects.get(kind="status")
    assert services.apply_status_update(inbound_id=row.pk) == "applied"
    assert services.apply_status_update(inbound_id=row.pk) == "skipped"
    assert Event.objects.filter(type="message.status").count() == 1


def test_messenger_read_watermark_marks_earlier_messages_read(ms_channel, post_webhook):
    psid = "6944325612345678"
    older = outbound(ms_channel, "m_A", contact_id=psid, status="delivered")
    later = outbound(ms_channel, "m_B", contact_id=psid, status="sent")
    watermark = datetime.fromtimestamp(1732540005, tz=UTC)
    Message.objects.filter(pk=older.pk).update(created_at=watermark - timedelta(minutes=5))
    Message.objects.filter(pk=later.pk).update(created_at=watermark + timedelta(minutes=5))
    assert apply_fixture(post_webhook, ms_channel, "messenger", "read", MS_SECRET) == ["applied"]
    older.refresh_from_db()
    later.refresh_from_db()
    assert (older.status, later.status) == ("read", "sent")


def test_messenger_delivery_matches_by_mid(ms_channel, post_webhook):
    message = outbound(ms_channel, "m_SENT1", contact_id="6944325612345678")
    assert apply_fixture(post_webhook, ms_channel, "messenger", "delivery", MS_SECRET) == ["applied"]
    message.refresh_from_db()
    assert message.status == "delivered"
