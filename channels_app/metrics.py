"""The channels area's metrics: webhook and web chat counters, and the stored inbound rows by status
(a scrape-time gauge). Declared when ChannelsAppConfig.ready() imports this module."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count

from channels_app.models import InboundEvent
from config.metrics import Sample, counter

counter(
    "webhook_requests_total",
    "Meta webhook POSTs by platform and outcome (ok, invalid_signature, payload_too_large, ...)",
    labels=("platform", "outcome"),
)
counter(
    "webhook_handshakes_total", "Meta webhook verification GETs by platform and outcome", labels=("platform", "outcome")
)
counter("webchat_refusals_total", "Web chat requests and sockets refused by a limit, by limit", labels=("reason",))
counter(
    "unrouted_webhooks_dropped_total",
    "Webhooks for no known channel dropped by a limit, by platform and limit",
    labels=("platform", "limit"),
)
counter(
    "unrouted_webhooks_kept_total",
    "Webhooks for no known channel kept for inspection, by platform",
    labels=("platform",),
)
counter("unrouted_webhooks_purged_total", "Kept unrouted webhooks deleted by the purge")


def inbound_events_gauge() -> Iterable[Sample]:
    """Stored webhook messages and statuses by processing status: a growing ``pending`` is a stalled worker."""
    for row in InboundEvent.objects.values("status", "kind").annotate(n=Count("id")):
        yield "metachat_inbound_events", {"status": row["status"], "kind": row["kind"]}, row["n"]
