"""Delivery statuses of the messages we sent: the core applies them to its own ``Message`` rows.

A channel adapter parses a platform's status into a ``StatusUpdate``; channels_app stores it once as an
inbound event and hands it here (``message_status_update``), as it hands messages to the turn pipeline.
A status only moves a message forward (statuses arrive out of order: read never goes back to
delivered); ``failed`` keeps the platform's error. Each change emits ``message.status`` /
``message.failed`` in the caller's transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from channels_app.adapters.base import StatusUpdate
from conversations.models import Message
from events.services import emit
from events.types import EventType
from tenants.models import Tenant

STATUS_RANK = {"received": 0, "processed": 0, "queued": 0, "stored": 0, "sent": 1, "delivered": 2, "read": 3}
PLATFORM_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "played": "read", "failed": "failed"}
# WhatsApp's error for a reply sent more than 24 hours after the person last wrote.
OUTSIDE_WINDOW_ERROR = 131047


class StatusNotApplicable(Exception):
    """The update can never apply (an unknown status, or no message id nor watermark); says why."""


def message_status_update(*, tenant: Tenant | UUID, channel_id: UUID, update: StatusUpdate) -> int | None:
    """Apply ``update`` to the matching outbound message(s) of the channel, locking them; call inside a
    transaction. Returns how many messages changed, or None when no outbound message carries the
    update's platform id (yet: the send may not be committed). Raises StatusNotApplicable."""
    target = PLATFORM_STATUS.get(update.status)
    if target is None:
        raise StatusNotApplicable(f"unknown status '{update.status}'")
    outbound = Message.objects.for_tenant(tenant).filter(channel_id=channel_id, direction=Message.Direction.OUTBOUND)
    if update.message_id:
        messages = list(outbound.filter(platform_message_id=update.message_id).select_for_update())
        if not messages:
            # A reply split into several parts keeps every part's id in payload.platform_message_ids.
            messages = list(
                outbound.filter(payload__platform_message_ids__contains=[update.message_id]).select_for_update()
            )
        if not messages:
            return None
    elif update.watermark is not None:
        # Messenger: everything sent to this person up to the watermark is delivered/read.
        ranks = [s for s, r in STATUS_RANK.items() if 1 <= r < STATUS_RANK[target]]
        messages = list(
            outbound.filter(
                conversation__contact__external_id=update.recipient_id,
                created_at__lte=datetime.fromtimestamp(update.watermark, tz=UTC),
                status__in=ranks,
            ).select_for_update()
        )
    else:
        raise StatusNotApplicable("status without message id or watermark")
    return sum(_transition(message, target, update) for message in messages)


def _transition(message: Message, target: str, update: StatusUpdate) -> int:
    current = message.status
    if target == "failed":
        if current in ("failed", "delivered", "read"):
            return 0
        message.status = "failed"
        message.error = {**(update.error or {}), "platform_status": "failed"}
        if (update.error or {}).get("code") == OUTSIDE_WINDOW_ERROR:
            message.error["reason"] = "outside_window"
        message.save(update_fields=["status", "error", "updated_at"])
        emit(
            tenant=message.tenant_id,
            type=EventType.MESSAGE_FAILED,
            payload={**_status_payload(message, update), "error": message.error},
        )
        return 1
    if current == "failed" or STATUS_RANK.get(current, 0) >= STATUS_RANK[target]:
        return 0
    message.status = target
    message.save(update_fields=["status", "updated_at"])
    emit(tenant=message.tenant_id, type=EventType.MESSAGE_STATUS, payload=_status_payload(message, update))
    return 1


def _status_payload(message: Message, update: StatusUpdate) -> dict[str, Any]:
    return {
        "message_id": message.pk,
        "conversation_id": str(message.conversation_id),
        "channel_id": str(message.channel_id),
        "platform_message_id": message.platform_message_id,
        "status": message.status,
        "platform_status": update.status,
        "timestamp": update.timestamp,
    }
