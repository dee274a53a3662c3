"""Celery tasks: load ids, call the pipeline. Idempotent (a processed event is skipped), acks_late."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from conversations import pipeline
from conversations.models import Conversation


@shared_task(
    name="conversations.handle_inbound_message",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def handle_inbound_message(inbound_event_id: int) -> int:
    return pipeline.process_inbound(inbound_event_id=int(inbound_event_id))


@shared_task(
    bind=True,
    name="conversations.retry_turn",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=8,
)
def retry_turn(self, conversation_id: str) -> int:  # type: ignore[no-untyped-def]
    conversation = Conversation.objects.select_related("contact").filter(pk=conversation_id).first()
    if conversation is None:
        return 0
    turns = pipeline.process_conversation(conversation=conversation)
    if turns is None:  # a turn of this contact is running; try again shortly
        raise self.retry(countdown=1, max_retries=30)
    return turns


@shared_task(name="conversations.roll_up_analytics", ignore_result=True)
def roll_up_analytics(days: int | None = None) -> int:
    """Roll up the closed days of the last ``ANALYTICS_ROLLUP_DAYS`` that active tenants lack, so the
    analytics page never pays for them (the first request of a large tenant's 90 days took 6-10 s).
    Cheap when nothing is missing: one grouped count. Returns the tenants checked."""
    import datetime as dt

    from django.conf import settings

    from conversations import analytics
    from tenants.models import Tenant

    last = analytics.last_closed_day()
    span = days if days is not None else settings.ANALYTICS_ROLLUP_DAYS
    tenant_ids = list(Tenant.objects.filter(is_active=True).values_list("pk", flat=True))
    if tenant_ids and span > 0:
        analytics.ensure_rollups(tenant_ids, analytics.DateRange(last - dt.timedelta(days=span - 1), last))
    return len(tenant_ids)


@shared_task(name="conversations.analyse_conversations", ignore_result=True)
def analyse_conversations() -> int:
    """Sentiment and tags of the conversations whose user wrote since their last analysis
    (conversations.intelligence); every minute from beat. Returns how many were analysed."""
    from conversations import intelligence

    return intelligence.analyse_pending()
