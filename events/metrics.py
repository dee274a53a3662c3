"""Gauges of the events area, registered with config.metrics from EventsConfig.ready()."""

from __future__ import annotations

from collections.abc import Iterable

from config.metrics import Sample
from events.models import Event


def event_log_gauge() -> Iterable[Sample]:
    """Rows in the event log (audit + outbox): the table every change writes to."""
    yield "metachat_events_total_rows", {}, Event.objects.count()
