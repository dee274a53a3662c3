"""Celery tasks of the outbox. They load ids, call events.delivery / events.publisher, and are safe to
run twice (claims, SKIP LOCKED, the advisory lock and unique constraints see to that). All run on the
``webhooks`` queue (config/settings/events.py), away from message processing."""

from __future__ import annotations

from celery import shared_task

from events import delivery, outbox, publisher

DRAIN_BUDGET_SECONDS = 1.0
DISPATCH_BATCH = 500
_OPTIONS = {"acks_late": True, "ignore_result": True, "max_retries": 0}


@shared_task(name="events.dispatch_events", **_OPTIONS)
def dispatch_events() -> int:
    """Turn pending events into webhook deliveries (whole backlog, batch by batch)."""
    outbox.clear_flag(outbox.dispatch_flag())
    total = 0
    for _ in range(200):
        handled = delivery.dispatch_pending_events(batch_size=DISPATCH_BATCH)
        total += handled
        if handled < DISPATCH_BATCH:
            # All caught up: events committed since this task cleared its flag kicked a new one.
            return total
    outbox.kick_dispatch()  # a very large backlog: let other tasks in between
    return total


@shared_task(name="events.deliver_endpoint", **_OPTIONS)
def deliver_endpoint(endpoint_id: str) -> int:
    outbox.clear_flag(outbox.endpoint_flag(endpoint_id))
    # A short budget, then a fresh kick at the back of the queue: with a backlog, drains take turns
    # with the fan-out, the publisher and other endpoints instead of holding every thread.
    report = delivery.deliver_due(endpoint_id=endpoint_id, time_budget=DRAIN_BUDGET_SECONDS)
    if report.more:
        outbox.kick_endpoint(endpoint_id)
    return report.sent


@shared_task(name="events.publish_events", **_OPTIONS)
def publish_events() -> int:
    """Publish pending events to RabbitMQ. A broker failure is not retried here: the beat sweep
    kicks again every few seconds while events are pending."""
    outbox.clear_flag(outbox.publish_flag())
    report = publisher.publish_pending()
    if report.pending and not report.error:
        outbox.kick_publish()
    return report.published


@shared_task(name="events.sweep_outbox", **_OPTIONS)
def sweep_outbox() -> dict:
    return outbox.sweep()
