"""emit(): the one way anything records an event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from config.logs import get_correlation_id
from events.models import Event
from events.types import EventType
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Called after the emitting transaction commits, with the committed Event. Delivery components
# (tenant webhooks, RabbitMQ, in-process subscribers) register here; see events.bus.
_after_commit_hooks: list[Callable[[Event], None]] = []


def register_after_commit(hook: Callable[[Event], None]) -> None:
    if hook not in _after_commit_hooks:
        _after_commit_hooks.append(hook)


def emit(*, tenant: Tenant | Any, type: EventType | str, payload: dict[str, Any]) -> Event:
    """Write the Event row in the caller's transaction; dispatch it after that transaction commits."""
    event_type = EventType(type)
    event = Event.objects.create(
        tenant_id=getattr(tenant, "pk", tenant),
        type=event_type.value,
        payload=payload,
        correlation_id=get_correlation_id() or "",
    )
    if _after_commit_hooks:
        transaction.on_commit(lambda: _dispatch(event), robust=True)
    return event


def _dispatch(event: Event) -> None:
    for hook in list(_after_commit_hooks):
        try:
            hook(event)
        except Exception:
            # A failing subscriber never breaks the emitter; delivery is retried from the outbox.
            logger.exception("event hook failed", extra={"event_id": str(event.event_id), "hook": repr(hook)})
