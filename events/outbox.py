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
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from config.redis_clients import redis_client
from events.models import Event, WebhookDelivery

logger = logging.getLogger(__name__)

DISPATCH_TASK = "events.dispatch_events"
PUBLISH_TASK = "events.publish_events"
DELIVER_TASK = "events.deliver_endpoint"
# A queued task clears its flag when it starts; the expiry only matters if it never runs.
KICK_FLAG_SECONDS = 15


def _flag_key(flag: str) -> str:
    return cache.make_key(flag)  # the deployment's key prefix, as for every other cache key


def _kick(flag: str, task: str, args: list[Any] | None = None) -> bool:
    return _kick_many([(flag, task, args or [])]) == 1


def _kick_many(kicks: list[tuple[str, str, list[Any]]]) -> int:
    """Enqueue each (flag, task, args) unless its flag says a task is already queued (it will see this
    work). Every flag in one Redis round trip: a fan-out kicks each endpoint it created deliveries
    for, the emit path the fan-out and the publisher."""
    from config.celery import app

    if not kicks:
        return 0
    try:
        pipe = redis_client().pipeline(transaction=False)
        for flag, _task, _args in kicks:
            pipe.set(_flag_key(flag), 1, nx=True, ex=KICK_FLAG_SECONDS)
        added = pipe.execute()
    except Exception as exc:
        logger.warning("could not enqueue outbox tasks; the sweep will retry", extra={"error": str(exc)[:200]})
        return 0
    sent = 0
    for (flag, task, args), was_added in zip(kicks, added, strict=True):
        if not was_added:
            continue
        try:
            app.send_task(task, args=args)
            sent += 1
        except Exception as exc:
            with contextlib.suppress(Exception):
                redis_client().delete(_flag_key(flag))  # or no kick could be sent until the flag expires
            logger.warning("could not enqueue %s; the outbox sweep will retry", task, extra={"error": str(exc)[:200]})
    return sent


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


def endpoint_flag(endpoint_id: UUID | str) -> str:
    return f"events:kick:endpoint:{endpoint_id}"


def kick_dispatch() -> bool:
    return _kick(dispatch_flag(), DISPATCH_TASK)


def kick_publish() -> bool:
    if not settings.RABBITMQ_URL:
        return False
    return _kick(publish_flag(), PUBLISH_TASK)


def kick_endpoint(endpoint_id: UUID | str) -> bool:
    return _kick(endpoint_flag(endpoint_id), DELIVER_TASK, [str(endpoint_id)])


def kick_endpoints(endpoint_ids: Any) -> int:
    return _kick_many([(endpoint_flag(pk), DELIVER_TASK, [str(pk)]) for pk in endpoint_ids])


def kick_after_emit() -> int:
    """The fan-out and (with RabbitMQ) the publisher, in one Redis round trip."""
    kicks: list[tuple[str, str, list[Any]]] = [(dispatch_flag(), DISPATCH_TASK, [])]
    if settings.RABBITMQ_URL:
        kicks.append((publish_flag(), PUBLISH_TASK, []))
    return _kick_many(kicks)


def clear_flag(flag: str) -> None:
    """Called by a task as it starts: work committed from now on needs (and gets) a new kick."""
    try:
        redis_client().delete(_flag_key(flag))
    except Exception:
        logger.warning("could not clear kick flag %s", flag)


# Seconds: the most a committed event waits for its kick (see _Throttle).
KICK_WINDOW = 0.02
_throttled_kick = _Throttle(lambda: kick_after_emit(), KICK_WINDOW)


def on_event_committed(event: Event) -> None:
    _throttled_kick()


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
