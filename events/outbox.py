"""From committed Event rows to Celery: the after-commit kick and the beat sweep.

After an event commits, ``on_event_committed`` *kicks* the fan-out (events → webhook deliveries) and
the RabbitMQ publisher. A kick enqueues a task unless one is already queued (a short-lived Redis
flag that the task clears when it starts), so a burst of events costs a handful of tasks, each
draining everything pending. Nothing depends on a kick arriving: ``sweep`` (beat, every 5 s) finds
events and deliveries still waiting (broker down, worker crash, lost task) and kicks again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from events.models import Event, WebhookDelivery

logger = logging.getLogger(__name__)

DISPATCH_TASK = "events.dispatch_events"
PUBLISH_TASK = "events.publish_events"
DELIVER_TASK = "events.deliver_endpoint"
# A queued task clears its flag when it starts; the expiry only matters if it never runs.
KICK_FLAG_SECONDS = 15


def _kick(flag: str, task: str, args: list[Any] | None = None) -> bool:
    from config.celery import app

    try:
        if not cache.add(flag, 1, KICK_FLAG_SECONDS):
            return False  # a task is already queued and will see this work
        app.send_task(task, args=args or [])
        return True
    except Exception as exc:
        with contextlib.suppress(Exception):
            cache.delete(flag)  # or no kick could be sent until the flag expires
        logger.warning("could not enqueue %s; the outbox sweep will retry", task, extra={"error": str(exc)[:200]})
        return False


class _Throttle:
    """At most one kick per ``window`` seconds per process, and always one after the last call.

    The first call kicks at once; calls within the window schedule a single trailing kick at its
    end. Every committed event is thus followed by a kick within ``window`` (so no event waits for
    the sweep), at a fraction of the Redis round trips when events come in bursts.
    """

    def __init__(self, fn: Any, window: float) -> None:
        self.fn = fn
        self.window = window
        self.lock = threading.Lock()
        self.last = 0.0
        self.trailing = False

    def __call__(self) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last >= self.window and not self.trailing:
                self.last = now
                run_now = True
            else:
                run_now = False
                if not self.trailing:
                    self.trailing = True
                    timer = threading.Timer(max(0.0, self.window - (now - self.last)), self._trail)
                    timer.daemon = True
                    timer.start()
        if run_now:
            self.fn()

    def _trail(self) -> None:
        with self.lock:
            self.trailing = False
            self.last = time.monotonic()
        try:
            self.fn()
        except Exception:
            logger.exception("outbox kick failed")


def dispatch_flag() -> str:
    return "events:kick:dispatch"


def publish_flag() -> str:
    return "events:kick:publish"


def endpoint_flag(endpoint_id: Any) -> str:
    return f"events:kick:endpoint:{endpoint_id}"


def kick_dispatch() -> bool:
    return _kick(dispatch_flag(), DISPATCH_TASK)


def kick_publish() -> bool:
    if not settings.RABBITMQ_URL:
        return False
    return _kick(publish_flag(), PUBLISH_TASK)


def kick_endpoint(endpoint_id: Any) -> bool:
    return _kick(endpoint_flag(endpoint_id), DELIVER_TASK, [str(endpoint_id)])


def clear_flag(flag: str) -> None:
    """Called by a task as it starts: work committed from now on needs (and gets) a new kick."""
    try:
        cache.delete(flag)
    except Exception:
        logger.warning("could not clear kick flag %s", flag)


# Seconds: the most a committed event waits for its kick (see _Throttle).
KICK_WINDOW = 0.02
_throttled_dispatch = _Throttle(lambda: kick_dispatch(), KICK_WINDOW)
_throttled_publish = _Throttle(lambda: kick_publish(), KICK_WINDOW)


def on_event_committed(event: Event) -> None:
    _throttled_dispatch()
    if event.publish_pending:
        _throttled_publish()


def sweep(*, settle_seconds: float = 2.0) -> dict[str, int]:
    """Kick whatever is still waiting: events not yet fanned out or published, and endpoints with
    deliveries due (first attempts, retries whose time has come, leases of crashed drains)."""
    now = timezone.now()
    settled = now - timedelta(seconds=settle_seconds)
    report = {"dispatch": 0, "publish": 0, "endpoints": 0}
    if Event.objects.filter(dispatch_pending=True, created_at__lt=settled).exists():
        report["dispatch"] = int(kick_dispatch())
    if settings.RABBITMQ_URL and Event.objects.filter(publish_pending=True, created_at__lt=settled).exists():
        report["publish"] = int(kick_publish())
    due = (
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now, endpoint__is_active=True
        )
        .values_list("endpoint_id", flat=True)
        .distinct()
    )
    for endpoint_id in due[:1000]:
        report["endpoints"] += int(kick_endpoint(endpoint_id))
    return report
