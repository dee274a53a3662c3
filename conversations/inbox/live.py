"""What agents see change without a reload: one channel-layer group per tenant.

Every staff socket of a tenant (``consumer.InboxConsumer``) is in ``tenant_group(tenant_id)``. Messages
and state changes reach it from the event bus (``on_event``: the process that committed the change,
after the commit: a Celery worker for a turn, daphne for an agent's action); assignment, notes and
typing, which are no integrator events, are pushed by ``conversations.inbox.services``; a conversation's
new analysis (sentiment and tags) by ``conversations.intelligence`` through ``push_analysis``. Best effort:
a lost push (Redis down) costs an agent nothing a reload would not give back.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from django.db import transaction

from config import channel_layer
from events.models import Event
from events.types import EventType

logger = logging.getLogger(__name__)

# The consumer's handler for every frame pushed to a tenant group ("inbox.event" -> inbox_event).
GROUP_EVENT_TYPE = "inbox.event"
PREVIEW_CHARS = 160
# A push waits at most this long for the channel layer (best effort: an agent's reload gives it back).
PUSH_TIMEOUT = 5.0


def tenant_group(tenant_id: UUID) -> str:
    """Channel-layer group of every staff socket of one tenant (hashed: names are limited to 100 ASCII)."""
    return f"inbox.tenant.{hashlib.sha256(str(tenant_id).encode()).hexdigest()[:40]}"


def push(tenant_id: UUID, frame: dict[str, Any]) -> None:
    """Send ``frame`` to every agent socket of the tenant, now."""
    try:
        channel_layer.group_send(
            tenant_group(tenant_id), {"type": GROUP_EVENT_TYPE, "event": frame}, timeout=PUSH_TIMEOUT
        )
    except (redis.RedisError, OSError) as exc:  # OSError: TimeoutError too
        logger.warning("inbox push lost: channel layer unavailable", extra={"error": str(exc), "kind": frame["type"]})


def push_after_commit(tenant_id: UUID, frame: dict[str, Any]) -> None:
    """``push`` once the caller's transaction commits (nothing if it rolls back)."""
    transaction.on_commit(lambda: push(tenant_id, frame), robust=True)


def push_analysis(
    *, tenant_id: UUID, conversation_id: UUID, sentiment: str, tags: list[str], analysed_at: datetime | None
) -> None:
    """A conversation's sentiment and tags were (re)computed: its row and contact panel change in place
    on the tenant's agents' pages (and it enters or leaves a list filtered by sentiment or tag)."""
    push_after_commit(
        tenant_id,
        {
            "type": "analysis",
            "conversation_id": str(conversation_id),
            "sentiment": sentiment,
            "tags": list(tags),
            "analysed_at": analysed_at.isoformat() if analysed_at else None,
        },
    )


def _message_frame(event: Event) -> dict[str, Any]:
    payload = event.payload
    inbound = event.type == EventType.MESSAGE_RECEIVED
    text = str(payload.get("text") or "")
    return {
        "type": "message",
        "conversation_id": payload.get("conversation_id"),
        "message": {
            "id": payload.get("message_id"),
            "direction": "in" if inbound else "out",
            "sender": "user" if inbound else str(payload.get("sender") or "assistant"),
            "kind": str(payload.get("kind") or "text"),
            "text": text,
            "sources": payload.get("sources") or [],
            "status": "failed" if event.type == EventType.MESSAGE_FAILED else ("received" if inbound else "sent"),
            "error": str(payload.get("message") or "") if event.type == EventType.MESSAGE_FAILED else "",
            "agent": payload.get("agent"),
            "media": [],
            "created_at": event.created_at.isoformat() if event.created_at else None,
        },
        "preview": text[:PREVIEW_CHARS],
    }


def on_event(event: Event) -> None:
    """Event-bus subscriber: messages and state changes go to the tenant's agents."""
    kind = event.type
    payload = event.payload or {}
    if kind in (EventType.MESSAGE_RECEIVED, EventType.MESSAGE_SENT):
        if payload.get("message_id") is None or payload.get("sender") == "tool":
            return
        push(event.tenant_id, _message_frame(event))
    elif kind == EventType.MESSAGE_FAILED and payload.get("message_id") is not None and payload.get("stage") == "send":
        push(event.tenant_id, _message_frame(event))
    elif kind == EventType.CONVERSATION_CREATED:
        push(event.tenant_id, {"type": "conversation", "conversation_id": payload.get("conversation_id"), "new": True})
    elif kind == EventType.CONVERSATION_UPDATED:
        push(
            event.tenant_id,
            {
                "type": "conversation",
                "conversation_id": payload.get("conversation_id"),
                "state": payload.get("state"),
                "previous_state": payload.get("previous_state"),
                "reason": payload.get("reason"),
                "actor": payload.get("actor"),
                # Someone asks for a human: agents' pages notify (browser notification, sound).
                "handoff": payload.get("state") == "handoff_requested",
            },
        )
