"""Delivery statuses: hand each stored status update to the core (conversations.statuses)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from channels_app.adapters.base import StatusUpdate
from channels_app.models import InboundEvent
from channels_app.services import campaigns
from conversations.statuses import StatusNotApplicable, message_status_update

logger = logging.getLogger(__name__)


class StatusTargetNotFound(Exception):
    """No outbound message carries this platform id (yet: the send may not be committed)."""


def apply_status_update(*, inbound_id: int, final_attempt: bool = False) -> str:
    """Hand one stored status update to the core (conversations.statuses), which moves the matching
    outbound message(s) forward; record the outcome on the inbound event. Idempotent.

    Returns what happened: ``skipped`` (not pending), ``applied``, ``unchanged``, ``ignored``.
    Raises StatusTargetNotFound when the message is not known yet and this is not the last attempt.
    """
    with transaction.atomic():
        row = InboundEvent.objects.select_for_update().filter(pk=inbound_id, kind=InboundEvent.Kind.STATUS).first()
        if row is None or row.status != InboundEvent.Status.PENDING:
            return "skipped"
        update = StatusUpdate(**row.normalized)
        row.attempts += 1
        if campaigns.apply_status(tenant_id=row.tenant_id, update=update):
            return _finish(row, InboundEvent.Status.PROCESSED, "", result="applied")
        try:
            changed = message_status_update(tenant=row.tenant_id, channel_id=row.channel_id, update=update)
        except StatusNotApplicable as exc:
            return _finish(row, InboundEvent.Status.IGNORED, str(exc))
        if changed is not None:
            return _finish(row, InboundEvent.Status.PROCESSED, "", result="applied" if changed else "unchanged")
        if final_attempt:
            return _finish(row, InboundEvent.Status.IGNORED, "no outbound message with this platform id")
        row.save(update_fields=["attempts"])
    # Raised after the commit so the attempt count survives; the task retries later.
    raise StatusTargetNotFound(update.message_id)


def _finish(row: InboundEvent, status: str, error: str, *, result: str = "ignored") -> str:
    row.status = status
    row.error = error
    row.processed_at = timezone.now()
    row.save(update_fields=["status", "error", "attempts", "processed_at"])
    if error:
        logger.info("status update not applied", extra={"inbound_id": row.pk, "reason": error})
    return result
