"""The in-process event bus (the original design's EventEmitter): subscribers called after the emitting commit.

``subscribe("message.received", fn)`` or ``subscribe("*", fn)``; ``fn(event)`` runs in the process
that committed, after the commit, never inside the transaction: a subscriber that raises is logged
and cannot undo, block or break the change that emitted the event, nor the other subscribers. A
rolled-back transaction calls nobody. For work that must survive a crash, use a Celery task (or a
tenant webhook / RabbitMQ consumer) instead: in-process subscribers are best effort.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from events.models import Event
from events.types import EventType

logger = logging.getLogger(__name__)

Subscriber = Callable[[Event], None]
ALL = "*"

_subscribers: dict[str, list[Subscriber]] = {}


def subscribe(event_type: EventType | str, fn: Subscriber) -> Callable[[], None]:
    """Register ``fn`` for one type (or ``"*"``); return a function that unsubscribes it."""
    key = ALL if event_type == ALL else EventType(event_type).value
    listeners = _subscribers.setdefault(key, [])
    if fn not in listeners:
        listeners.append(fn)

    def unsubscribe() -> None:
        if fn in _subscribers.get(key, []):
            _subscribers[key].remove(fn)

    return unsubscribe


def publish_committed(event: Event) -> None:
    """The after-commit hook (see events.services.register_after_commit)."""
    for fn in [*_subscribers.get(event.type, ()), *_subscribers.get(ALL, ())]:
        try:
            fn(event)
        except Exception:
            logger.exception("event subscriber failed", extra={"event_id": str(event.event_id), "subscriber": repr(fn)})
