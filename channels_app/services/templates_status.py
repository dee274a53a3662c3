"""Template status news from Meta's ``message_template_status_update`` webhook (routed by WhatsApp
Business Account): the stored template follows at once, so a template Meta paused, rejected or
disabled is refused with its reason before the next send, and an approved one can go."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from channels_app.models import Channel, MessageTemplate

logger = logging.getLogger(__name__)

# The webhook's event -> the template's status afterwards (None: the status does not change).
EVENT_STATUS: dict[str, str | None] = {
    "APPROVED": "APPROVED",
    "REJECTED": "REJECTED",
    "PAUSED": "PAUSED",
    "DISABLED": "DISABLED",
    "PENDING": "PENDING",
    "IN_APPEAL": "IN_APPEAL",
    "PENDING_DELETION": "PENDING_DELETION",
    "DELETED": "DELETED",
    "ARCHIVED": "ARCHIVED",
    "UNARCHIVED": "APPROVED",
    "REINSTATED": "APPROVED",
    "FLAGGED": None,  # still approved; Meta warns it may be disabled
}


def apply(channels: dict[str, Channel], updates: list[dict[str, Any]]) -> int:
    """Update the templates these updates name, on the channel each was routed to. Returns how many
    template rows changed. Idempotent (a redelivery sets the same status)."""
    changed = 0
    for update in updates:
        channel = channels.get(str(update.get("routing_id", "")))
        event = str(update.get("event", "")).upper()
        if channel is None or event not in EVENT_STATUS:
            logger.info("template status update not applied", extra={"event": event[:40]})
            continue
        status = EVENT_STATUS[event]
        reason = str(update.get("reason") or "")
        fields: dict[str, Any] = {"synced_at": timezone.now()}
        if status is not None:
            fields["status"] = status
            fields["rejected_reason"] = "" if reason.upper() == "NONE" else reason[:200]
        changed += (
            MessageTemplate.objects.for_tenant(channel.tenant_id)
            .filter(
                waba_id=str(update.get("waba_id", "")),
                name=str(update.get("name", "")),
                language=str(update.get("language", "")),
            )
            .update(**fields)
        )
    return changed
