"""Store what a channel received, once, and hand it to Celery after commit.

This is the seam between the edges (webhook views, the web chat consumer) and the core: the edge
parses a payload with its adapter and calls ``record_inbound``; the turn pipeline (a Celery task
named ``HANDLE_MESSAGE_TASK``) and the status updater (``APPLY_STATUS_TASK``) take it from there.
A row whose task was never enqueued (broker down, crash between commit and publish) is picked up by
``requeue_stale_pending`` from beat, so nothing received is ever lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from channels_app.adapters.base import NormalizedMessage, StatusUpdate
from channels_app.models import Channel, InboundEvent
from config.logs import get_correlation_id

logger = logging.getLogger(__name__)

HANDLE_MESSAGE_TASK = "conversations.handle_inbound_message"
APPLY_STATUS_TASK = "channels_app.apply_status_update"


def status_dedupe_key(update: StatusUpdate) -> str:
    return f"{update.message_id or 'watermark'}:{update.status}:{update.watermark or ''}"


def record_inbound(
    *, channel: Channel, messages: Iterable[NormalizedMessage] = (), statuses: Iterable[StatusUpdate] = ()
) -> list[int]:
    """Insert each item once (ON CONFLICT DO NOTHING); return the ids of the rows that were new.

    Must run inside a transaction (the caller's); the new rows are enqueued after it commits.
    """
    cid = get_correlation_id() or ""
    rows = [(InboundEvent.Kind.MESSAGE, m.message_id, m.sender_id, m.to_dict()) for m in messages] + [
        (InboundEvent.Kind.STATUS, status_dedupe_key(s), s.recipient_id, s.to_dict()) for s in statuses
    ]
    if not rows:
        return []
    values_sql = ", ".join(["(%s, %s, %s, %s, %s, %s::jsonb, %s, 'pending', '', 0, now())"] * len(rows))
    params: list[object] = []
    for kind, key, sender, normalized in rows:
        params += [channel.tenant_id, channel.pk, kind, key, sender, json.dumps(normalized), cid]
    sql = (
        f"INSERT INTO {InboundEvent._meta.db_table} "  # noqa: S608 (table name is ours)
        "(tenant_id, channel_id, kind, dedupe_key, sender_external_id, normalized, correlation_id, status, "
        "error, attempts, received_at) "
        f"VALUES {values_sql} ON CONFLICT (tenant_id, channel_id, dedupe_key) DO NOTHING RETURNING id, kind"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        created = cursor.fetchall()
    if created:
        transaction.on_commit(lambda: enqueue(created), robust=True)
    return [row[0] for row in created]


def enqueue(rows: Iterable[tuple[int, str]]) -> None:
    """Publish one task per inbound row. A failure is logged; the beat sweep retries the row later."""
    from config.celery import app

    for inbound_id, kind in rows:
        task = HANDLE_MESSAGE_TASK if kind == InboundEvent.Kind.MESSAGE else APPLY_STATUS_TASK
        try:
            app.send_task(task, args=[inbound_id])
        except Exception as exc:
            logger.error(
                "could not enqueue inbound event; the pending sweep will retry it",
                extra={"inbound_id": inbound_id, "error": str(exc)},
            )


def requeue_stale_pending(*, older_than: timedelta = timedelta(seconds=60), limit: int = 1000) -> int:
    """Re-enqueue pending rows that have waited too long (their task was lost). Idempotent by design:
    the handlers skip rows that are no longer pending."""
    cutoff = timezone.now() - older_than
    stale = list(
        InboundEvent.objects.filter(status=InboundEvent.Status.PENDING, received_at__lt=cutoff)
        .order_by("id")
        .values_list("id", "kind")[:limit]
    )
    if stale:
        logger.warning("re-enqueueing stale pending inbound events", extra={"count": len(stale)})
        enqueue(stale)
    return len(stale)
