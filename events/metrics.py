"""The events area's metrics: tenant webhook deliveries and RabbitMQ publishing (counters), the event
log's size and the outbox lag (scrape-time gauges). Declared when EventsConfig.ready() imports this."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.utils import timezone

from config.metrics import Sample, counter
from events.models import Event

counter(
    "webhook_delivery_attempts_total",
    "HTTP attempts of tenant webhook deliveries by outcome (success: a 2xx answer)",
    labels=("outcome",),
    initial=[{"outcome": "success"}, {"outcome": "failure"}],
)
counter("webhook_deliveries_dead_total", "Tenant webhook deliveries given up after their last attempt")
counter("rabbitmq_events_published_total", "Events the RabbitMQ broker confirmed")
counter("rabbitmq_publish_failures_total", "Publishing runs to RabbitMQ that failed")


def event_log_gauge() -> Iterable[Sample]:
    """Rows in the event log (audit + outbox): the table every change writes to."""
    yield "metachat_event_log_rows", {}, Event.objects.count()


def outbox_lag_gauge() -> Iterable[Sample]:
    """How long the oldest event not yet handed on has waited, by outlet: ``webhook_fanout`` (not yet
    turned into webhook deliveries) and, when RabbitMQ is configured, ``rabbitmq`` (not confirmed by the
    broker). 0 when nothing waits. Both read the first row of a partial index."""
    now = timezone.now()
    outlets = {"webhook_fanout": {"dispatch_pending": True}}
    if settings.RABBITMQ_URL:
        outlets["rabbitmq"] = {"publish_pending": True}
    for outlet, waiting in outlets.items():
        oldest = Event.objects.filter(**waiting).order_by("id").values_list("created_at", flat=True).first()
        yield "metachat_outbox_lag_seconds", {"outlet": outlet}, (now - oldest).total_seconds() if oldest else 0.0
