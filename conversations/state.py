"""Who owns a conversation: one explicit state machine.

    bot ──► handoff_requested ──► agent ──► resolved
     ▲            │  (agent replies)          │
     └────────────┴──── return to bot ◄───────┘  (or the user writes again after "resolved")

``ALLOWED`` is the whole table; any other move raises ``InvalidTransition`` (the API answers 409
``invalid_transition``). Besides the picture: an agent may take a conversation over from the bot by
replying, staff may resolve one at any time, and an agent's reply reopens a resolved one for the
agent. Refused: asking for a human when a human already owns the conversation (``agent``) or when it
is closed (``resolved``: it reopens when the user writes again, or when it is returned to the bot).
Moving to the state a conversation is already in is a no-op, not an error (a retried request).

Every transition is made under a row lock, recorded as ``conversation.updated`` and, on escalation,
``human_handoff.requested``. Returning to the bot moves the LLM's context boundary past everything
said so far, so a resumed bot does not loop back into the old escalation.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from conversations.models import Conversation, Message
from events.services import emit
from events.types import EventType

State = Conversation.State

ALLOWED: dict[str, frozenset[str]] = {
    State.BOT: frozenset({State.HANDOFF_REQUESTED, State.AGENT, State.RESOLVED}),
    State.HANDOFF_REQUESTED: frozenset({State.AGENT, State.RESOLVED, State.BOT}),
    State.AGENT: frozenset({State.RESOLVED, State.BOT}),
    State.RESOLVED: frozenset({State.BOT, State.AGENT}),
}


class InvalidTransition(Exception):
    def __init__(self, current: str, target: str):
        super().__init__(f"a conversation in state '{current}' cannot go to '{target}'")
        self.current = current
        self.target = target


def conversation_payload(conversation: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": str(conversation.pk),
        "channel_id": str(conversation.channel_id),
        "contact_id": str(conversation.contact_id),
        "state": conversation.state,
    }


def transition(*, conversation: Conversation, to: str, reason: str, actor: str = "system") -> Conversation:
    """Move ``conversation`` to state ``to`` (no-op if already there). Raises InvalidTransition.

    Locks the row, so an agent's action and a turn never interleave their state changes."""
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk, tenant_id=conversation.tenant_id)
        current = locked.state
        if current == to:
            _copy_state(locked, conversation)
            return conversation
        if to not in ALLOWED[current]:
            raise InvalidTransition(current, to)
        locked.state = to
        fields = ["state", "last_activity_at"]
        locked.last_activity_at = timezone.now()
        if to == State.BOT:
            boundary = Message.objects.filter(tenant_id=locked.tenant_id, conversation=locked).aggregate(m=Max("id"))[
                "m"
            ]
            locked.context_start_message_id = boundary
            fields.append("context_start_message_id")
        if to == State.HANDOFF_REQUESTED:
            locked.waiting_since = locked.last_activity_at  # the inbox's waiting time starts
            fields.append("waiting_since")
        elif to in (State.BOT, State.RESOLVED) and locked.waiting_since is not None:
            locked.waiting_since = None
            fields.append("waiting_since")
        if current == State.BOT or to == State.HANDOFF_REQUESTED:
            locked.handoff_reason = reason[:255]
            fields.append("handoff_reason")
        locked.save(update_fields=fields)
        payload = {**conversation_payload(locked), "previous_state": current, "reason": reason, "actor": actor}
        emit(tenant=locked.tenant_id, type=EventType.CONVERSATION_UPDATED, payload=payload)
        if to == State.HANDOFF_REQUESTED:
            emit(tenant=locked.tenant_id, type=EventType.HUMAN_HANDOFF_REQUESTED, payload=payload)
        _copy_state(locked, conversation)
    return conversation


def _copy_state(source: Conversation, target: Conversation) -> None:
    for field in ("state", "context_start_message_id", "handoff_reason", "last_activity_at", "waiting_since"):
        setattr(target, field, getattr(source, field))
