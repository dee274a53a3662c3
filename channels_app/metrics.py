"""Gauges of the channels area, registered with config.metrics from ChannelsAppConfig.ready()."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count

from channels_app.models import InboundEvent
from config.metrics import Sample


def inbound_events_gauge() -> Iterable[Sample]:
    """Stored webhook messages and statuses by processing status: a growing ``pending`` is a stalled worker."""
    for row in InboundEvent.objects.values("status", "kind").annotate(n=Count("id")):
        yield "metachat_inbound_events", {"status": row["status"], "kind": row["kind"]}, row["n"]
