"""Stage 2: find or create the contact and conversation, store the inbound messages once.

Runs in one transaction: contact, conversation (``conversation.created``), each message
(``message.received``), and, when a resolved conversation hears from its user again, the return to
the bot. Messages are unique on (tenant, channel, platform id), so a re-run stores nothing twice.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from channels_app.adapters.base import NormalizedMessage
from conversations import state
from conversations.models import Contact, Conversation, Message
from conversations.pipeline.turn import Turn
from events.services import emit
from events.types import EventType

# Message kinds the bot does not answer at all (a reaction is not a question).
CONTEXT_SENDERS = (Message.Sender.USER, Message.Sender.ASSISTANT, Message.Sender.AGENT)
# A returning contact's last_seen_at is written at most this often (seconds): one UPDATE less per turn.
LAST_SEEN_RESOLUTION = 60
SILENT_KINDS = frozenset({"reaction", "read", "deleted", "system"})


def _normalized(turn: Turn) -> list[tuple[Any, NormalizedMessage]]:
    return [(event, NormalizedMessage.from_dict(event.normalized)) for event in turn.inbound_events]


def _sender_name(messages: list[tuple[Any, NormalizedMessage]]) -> str:
    return next((m.sender_name for _, m in reversed(messages) if m.sender_name), "")


def _stored_ids(turn: Turn, ids: list[str]) -> QuerySet[Message, str]:
    """Which of these platform message ids the channel has stored already (a re-run of the burst)."""
    return (
        Message.objects.for_tenant(turn.tenant)
        .filter(channel=turn.channel, platform_message_id__in=ids)
        .values_list("platform_message_id", flat=True)
    )


def _latest_conversation(turn: Turn, ids: list[str]) -> tuple[Conversation | None, set[str]]:
    """The contact's latest conversation with its contact, and which of ``ids`` are stored already, in
    one query (a returning contact's case)."""
    queryset = (
        Conversation.objects.for_tenant(turn.tenant)
        .filter(channel=turn.channel, contact__tenant_id=turn.tenant.pk, contact__external_id=turn.sender_external_id)
        .select_related("contact")
        .order_by("-last_activity_at")
    )
    if not ids:  # an empty IN () would empty the whole query
        return queryset.first(), set()
    conversation = queryset.annotate(stored_ids=ArraySubquery(_stored_ids(turn, ids))).first()
    return conversation, set(conversation.stored_ids) if conversation is not None else set()


def _touch(contact: Contact, messages: list[tuple[Any, NormalizedMessage]]) -> None:
    """Move a returning contact's last_seen_at (at most every LAST_SEEN_RESOLUTION) and take a new name."""
    name = _sender_name(messages)
    now = timezone.now()
    stale = contact.last_seen_at is None or (now - contact.last_seen_at).total_seconds() > LAST_SEEN_RESOLUTION
    if messages and (stale or (name and name != contact.profile_name)):
        contact.last_seen_at = now
        contact.profile_name = name or contact.profile_name
        contact.save(update_fields=["last_seen_at", "profile_name"])


def _contact(turn: Turn, messages: list[tuple[Any, NormalizedMessage]]) -> Contact:
    contact, created = Contact.objects.get_or_create(
        tenant_id=turn.tenant.pk,
        channel=turn.channel,
        external_id=turn.sender_external_id,
        defaults={"profile_name": _sender_name(messages), "last_seen_at": timezone.now()},
    )
    if not created:
        _touch(contact, messages)
    return contact


def _conversation(turn: Turn, contact: Contact) -> Conversation:
    """A first conversation for a contact that has none."""
    conversation = Conversation.objects.create(tenant_id=turn.tenant.pk, channel=turn.channel, contact=contact)
    emit(tenant=turn.tenant, type=EventType.CONVERSATION_CREATED, payload=state.conversation_payload(conversation))
    return conversation


def _store(
    turn: Turn, conversation: Conversation, messages: list[tuple[Any, NormalizedMessage]], known: set[str]
) -> list[Message]:
    """Insert the messages not ``known`` (stored already) in one INSERT, each with ``message.received``."""
    if not messages:
        return []
    rows = [
        turn.message_row(
            direction=Message.Direction.INBOUND,
            sender=Message.Sender.USER,
            kind=message.type or "text",
            content=message.text or "",
            platform_message_id=message.message_id,
            payload={
                "normalized": {k: v for k, v in event.normalized.items() if k != "raw"},
                "inbound_event_id": event.pk,
            },
            status=Message.Status.RECEIVED,
        )
        for event, message in messages
        if message.message_id not in known
    ]
    stored = Message.objects.bulk_create(rows)
    for message in stored:
        emit(
            tenant=turn.tenant,
            type=EventType.MESSAGE_RECEIVED,
            payload={
                **turn.message_event(message),
                "contact_id": str(conversation.contact_id),
                "kind": message.kind,
                "text": message.content,
            },
        )
    return stored


def run(turn: Turn) -> None:
    started = time.monotonic()
    messages = _normalized(turn)
    ids = [m.message_id for _, m in messages]
    known: set[str] | None = None
    with transaction.atomic():
        if turn.conversation is None:
            turn.conversation, known = _latest_conversation(turn, ids)
            if turn.conversation is not None:
                turn.contact = turn.conversation.contact
                _touch(turn.contact, messages)
            else:
                contact = _contact(turn, messages)
                turn.contact, turn.conversation = contact, _conversation(turn, contact)
                known = None  # no conversation row carried the answer: asked on its own (once per contact)
        conversation = turn.conversation
        assert conversation is not None
        if messages and conversation.state == Conversation.State.RESOLVED and not turn.ignore_reason:
            # The user wrote again after the case was closed: the bot takes it back, with fresh context.
            state.transition(conversation=conversation, to=Conversation.State.BOT, reason="user wrote after resolution")
        # (last_activity_at is moved by the finish stage, in the same transaction as the outcome.)
        if known is None and ids:
            known = set(_stored_ids(turn, ids))
        turn.new_messages = _store(turn, conversation, messages, known or set())
    # The conversation since its handoff boundary, newest first (the LLM's history comes from it too),
    # and in it everything the user said that is not answered yet (this burst, or a failed turn).
    boundary = Q(id__gt=conversation.context_start_message_id) if conversation.context_start_message_id else Q()
    context = list(
        Message.objects.for_tenant(turn.tenant)
        .filter(boundary, conversation=conversation, sender__in=CONTEXT_SENDERS)
        .only("id", "sender", "content", "status", "kind", "platform_message_id")
        .order_by("-id")[: settings.LLM_HISTORY_MAX_MESSAGES]
    )
    turn.context_messages = context
    turn.user_messages = [
        m for m in reversed(context) if m.sender == Message.Sender.USER and m.status == Message.Status.RECEIVED
    ]
    turn.query = "\n".join(m.content for m in turn.user_messages if m.content.strip())
    contact = turn.contact or conversation.contact
    turn.contact = contact
    turn.language = (contact.language or turn.config.locale[0]).split("-")[0]
    if not turn.user_messages:
        turn.silent_reason = "nothing new to answer"
    elif not turn.query and all(m.kind in SILENT_KINDS for m in turn.user_messages):
        turn.silent_reason = "nothing to answer (reaction or status only)"
    turn.time("intake_ms", started)
