"""The outbox's line in /api/health: how far behind RabbitMQ publishing and webhook fan-out are."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from config.health import CheckResult
from events.models import Event
from events.publisher import publisher_state


def check_outbox() -> CheckResult:
    """Degraded when the publisher's last run failed with events waiting, or an event has waited
    longer than EVENTS_OUTBOX_LAG_WARNING_SECONDS to be published or fanned out."""
    now = timezone.now()
    detail: dict = {}
    ok = True
    lag_limit = settings.EVENTS_OUTBOX_LAG_WARNING_SECONDS
    oldest_dispatch = (
        Event.objects.filter(dispatch_pending=True).order_by("id").values_list("created_at", flat=True).first()
    )
    detail["webhook_fanout_lag_s"] = round((now - oldest_dispatch).total_seconds(), 1) if oldest_dispatch else 0.0
    if detail["webhook_fanout_lag_s"] > lag_limit:
        ok = False
    if settings.RABBITMQ_URL:
        oldest = Event.objects.filter(publish_pending=True).order_by("id").values_list("created_at", flat=True).first()
        detail["publish_lag_s"] = round((now - oldest).total_seconds(), 1) if oldest else 0.0
        detail["publish_pending"] = Event.objects.filter(publish_pending=True)[:10001].count()
        state = publisher_state()
        if state and not state.get("ok"):
            detail["publisher_error"] = state.get("error", "")
            if detail["publish_pending"]:
                ok = False
        if detail["publish_lag_s"] > lag_limit:
            ok = False
    return CheckResult(ok=ok, detail=detail)
