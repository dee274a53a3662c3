"""Celery tasks of the channels area: thin, idempotent, acks_late, explicit retry policy."""

from __future__ import annotations

from celery import shared_task

from channels_app import inbound, unrouted
from channels_app.adapters.base import SendError


@shared_task(name="channels_app.requeue_stale_pending", acks_late=True, ignore_result=True)
def requeue_stale_pending() -> int:
    return inbound.requeue_stale_pending()


@shared_task(name=inbound.DISPATCH_TASK, acks_late=True, ignore_result=True)
def dispatch_inbound(items: list[list]) -> int:
    """Publishing is idempotent downstream (handlers skip rows no longer pending), so a redelivered
    batch is harmless."""
    return inbound.dispatch(items)


@shared_task(
    name=inbound.APPLY_STATUS_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=6, default_retry_delay=1
)
def apply_status_update(self, inbound_id: int) -> str:
    """Statuses can outrun the commit of the send they describe: retry a few times (1, 2, 4, ... s)
    before recording the update as ignored."""
    from channels_app import services

    try:
        return services.apply_status_update(
            inbound_id=inbound_id, final_attempt=self.request.retries >= self.max_retries
        )
    except services.StatusTargetNotFound as exc:
        raise self.retry(exc=exc, countdown=2**self.request.retries) from None


@shared_task(
    name=inbound.PREPARE_MESSAGE_TASK,
    bind=True,
    acks_late=True,
    ignore_result=True,
    max_retries=4,
    default_retry_delay=2,
)
def prepare_inbound_message(self, inbound_id: int) -> bool:
    """Fetch attachments (and a Messenger sender's name). Transient Graph errors (throttling, 5xx,
    network) retry with backoff; then the turn goes on without the file, which is recorded."""
    from channels_app import services

    try:
        return services.prepare_inbound_message(
            inbound_id=inbound_id, final_attempt=self.request.retries >= self.max_retries
        )
    except SendError as exc:
        raise self.retry(exc=exc, countdown=(exc.retry_after or 2) * (2**self.request.retries)) from None


@shared_task(name="channels_app.purge_unrouted_webhooks", acks_late=True, ignore_result=True)
def purge_unrouted_webhooks() -> int:
    """Deleting what is past its retention is idempotent: a rerun finds nothing left."""
    return unrouted.purge()


@shared_task(name="channels_app.run_campaign", bind=True, acks_late=True, ignore_result=True)
def run_campaign(self, campaign_id: str) -> str:
    """Send a slice of a campaign (~50 s), then enqueue the next slice, or come back after quiet hours,
    the schedule or the daily limit. Safe to run twice: rows are claimed with SKIP LOCKED and a row
    claimed once is never sent again."""
    from channels_app.services import campaigns

    outcome, wait = campaigns.run_campaign(campaign_id=campaign_id)
    if outcome in ("continue", "quiet", "scheduled", "daily_limit"):
        campaigns.enqueue(campaign_id, countdown=wait)
    return outcome


@shared_task(name="channels_app.resume_stalled_campaigns", ignore_result=True)
def resume_stalled_campaigns() -> int:
    from django.conf import settings

    from channels_app.services import campaigns

    return campaigns.resume_stalled(stall_seconds=settings.CAMPAIGN_STALL_SECONDS)
