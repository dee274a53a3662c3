"""Stage 2: find or create the contact and conversation, store the inbound messages once.

Runs in one transaction: contact, conversation (``conversation.created``), each message
(``message.received``), and, when a resolved conversation hears from its user again, the return to
the bot. Messages are unique on (tenant, channel, platform id), so a re-run stores nothing twice.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from channels_app.adapters.base import NormalizedMessage
from conversations import language, phrases, queries, state
from conversations.models import Contact, Conversation, Message
from conversations.pipeline import rows
from conversations.pipeline.turn import Turn
from events.services import event_row, insert_per_row_sql, inserted
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
    one query (a returning contact's case; hand-written: building it with the ORM cost more CPU than
    running it)."""
    tenant_id, channel_id = turn.tenant.pk, turn.channel.pk
    with connection.cursor() as cursor:
        cursor.execute(
            queries.latest_conversation_sql(),
            [tenant_id, channel_id, ids, tenant_id, channel_id, tenant_id, turn.sender_external_id],
        )
        row = cursor.fetchone()
    if row is None:
        return None, set()
    width = rows.width(Conversation)
    conversation = rows.instance(Conversation, row[:width])
    contact = rows.instance(Contact, row[width:-1])
    Conversation.contact.field.set_cached_value(conversation, contact)
    return conversation, set(row[-1])


def _touch_due(contact: Contact, messages: list[tuple[Any, NormalizedMessage]]) -> bool:
    """A returning contact's last_seen_at is due (at most every LAST_SEEN_RESOLUTION), or a new name."""
    name = _sender_name(messages)
    last_seen = contact.last_seen_at
    stale = last_seen is None or (timezone.now() - last_seen).total_seconds() > LAST_SEEN_RESOLUTION
    return bool(messages and (stale or (name and name != contact.profile_name)))


def _touch(contact: Contact, messages: list[tuple[Any, NormalizedMessage]]) -> None:
    """Move a returning contact's last_seen_at and take a new name, when ``_touch_due``."""
    if _touch_due(contact, messages):
        name = _sender_name(messages)
        contact.last_seen_at = timezone.now()
        contact.profile_name = name or contact.profile_name
        contact.save(update_fields=["last_seen_at", "profile_name"])


def _contact_and_conversation(turn: Turn, messages: list[tuple[Any, NormalizedMessage]]) -> Conversation:
    """The contact (new, or one without a conversation on this channel: an API or campaign contact,
    whose last_seen_at and name are then moved) and its first conversation with
    ``conversation.created``: one statement, atomic on its own."""
    contact = Contact(
        tenant_id=turn.tenant.pk,
        channel=turn.channel,
        external_id=turn.sender_external_id,
        profile_name=_sender_name(messages),
        last_seen_at=timezone.now(),
    )
    contacts = Contact._meta.db_table
    upsert, params = rows.insert_sql(
        Contact,
        [contact],
        returning=[rows.columns(Contact, contacts)],
        on_conflict=(
            "ON CONFLICT (tenant_id, channel_id, external_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at, "
            f"profile_name = COALESCE(NULLIF(EXCLUDED.profile_name, ''), {contacts}.profile_name)"
        ),
    )
    conversation = Conversation(tenant_id=turn.tenant.pk, channel=turn.channel)
    create, create_params = rows.insert_sql(
        Conversation,
        [conversation],
        returning=[rows.columns(Conversation, Conversation._meta.db_table)],
        expressions={"contact_id": "k.id"},
        source="k",
    )
    created = event_row(
        tenant=turn.tenant,
        type=EventType.CONVERSATION_CREATED,
        payload={**state.conversation_payload(conversation), "contact_id": None},  # filled in by the statement
    )
    emitted, event_params = insert_per_row_sql(
        [created], [str(conversation.pk)], rows="v_keys", key="k", id_as="contact_id"
    )
    width = rows.width(Contact)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH k AS ({upsert}), v AS ({create}), v_keys AS (SELECT contact_id AS id, id::text AS k FROM v), "  # noqa: S608
            f"emitted AS ({emitted}) SELECT k.*, v.*, e.id, e.event_id FROM k CROSS JOIN v CROSS JOIN emitted e",
            params + create_params + event_params,
        )
        row = cursor.fetchone()
    turn.contact = rows.instance(Contact, row[:width])
    conversation = rows.instance(Conversation, row[width:-2])
    Conversation.contact.field.set_cached_value(conversation, turn.contact)
    created.payload["contact_id"] = str(turn.contact.pk)
    inserted([created], [(row[-2], row[-1])])
    return conversation


def _store(
    turn: Turn, conversation: Conversation, messages: list[tuple[Any, NormalizedMessage]], known: set[str]
) -> list[Message]:
    """Insert the messages not ``known`` (stored already), each with ``message.received``, in one
    statement (atomic on its own)."""
    if not messages:
        return []
    rows_ = [
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
    if not rows_:
        return []
    received = [
        event_row(
            tenant=turn.tenant,
            type=EventType.MESSAGE_RECEIVED,
            payload={
                **turn.message_event(message),  # its message_id (None here) is filled in by the statement
                "contact_id": str(conversation.contact_id),
                "kind": message.kind,
                "text": message.content,
            },
        )
        for message in rows_
    ]
    insert, params = rows.insert_sql(Message, rows_, returning=["id", "platform_message_id"])
    emitted, event_params = insert_per_row_sql(
        received, [m.platform_message_id for m in rows_], rows="stored", key="platform_message_id", id_as="message_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH stored AS ({insert}), emitted AS ({emitted}) "  # noqa: S608 (rows / events SQL)
            "SELECT id, platform_message_id, NULL FROM stored UNION ALL SELECT id, NULL, event_id FROM emitted",
            params + event_params,
        )
        returned = cursor.fetchall()
    # Platform ids are unique within a burst (the inbound events are deduplicated on them).
    ids = {platform_id: row_id for row_id, platform_id, event_id in returned if event_id is None}
    rows.inserted(rows_, [ids[m.platform_message_id] for m in rows_])
    for message, event in zip(rows_, received, strict=True):
        event.payload["message_id"] = message.pk
    inserted(received, [(row_id, event_id) for row_id, _p, event_id in returned if event_id is not None])
    return rows_


def _context(turn: Turn, conversation: Conversation) -> list[Message]:
    """The conversation's messages since its handoff boundary, newest first (only ``queries.CONTEXT_FIELDS``)."""
    boundary = conversation.context_start_message_id
    params: list[Any] = [turn.tenant.pk, conversation.pk, [str(sender) for sender in CONTEXT_SENDERS]]
    if boundary:
        params.append(boundary)
    with connection.cursor() as cursor:
        cursor.execute(queries.context_sql(bool(boundary)), [*params, settings.LLM_HISTORY_MAX_MESSAGES])
        return [Message.from_db(connection.alias, queries.CONTEXT_FIELDS, row) for row in cursor.fetchall()]


def _answers_rating(conversation: Conversation, messages: list[tuple[Any, NormalizedMessage]]) -> bool:
    """The burst answers the closing satisfaction question: the conversation stays resolved (the
    handoff check stores the rating)."""
    if conversation.satisfaction_requested_at is None:
        return False
    from conversations.inbox.services import rating_answer

    taps = [str((m.reply or {}).get("payload") or "") for _, m in messages]
    return rating_answer(taps, "\n".join(m.text or "" for _, m in messages)) is not None


def run(turn: Turn) -> None:
    started = time.monotonic()
    messages = _normalized(turn)
    ids = [m.message_id for _, m in messages]
    known: set[str] | None = None
    returning = False  # a contact whose latest conversation the query below found
    if turn.conversation is None:
        turn.conversation, known = _latest_conversation(turn, ids)
        if turn.conversation is not None:
            turn.contact = turn.conversation.contact
            returning = True
    reopen = bool(
        messages
        and turn.conversation is not None
        and turn.conversation.state == Conversation.State.RESOLVED
        and not turn.ignore_reason
        and not _answers_rating(turn.conversation, messages)
    )
    # The everyday case, a returning contact's new messages and nothing else to write: one statement,
    # atomic on its own (no transaction to open and commit around it). A new contact's: two, each
    # atomic (a crash between them leaves a conversation whose messages the retry stores).
    found = turn.contact if returning else None
    alone = turn.conversation is None or (
        found is not None and known is not None and not reopen and not _touch_due(found, messages)
    )
    with nullcontext() if alone else transaction.atomic():
        if found is not None:
            _touch(found, messages)
        elif turn.conversation is None:
            turn.conversation = _contact_and_conversation(turn, messages)
            # Nothing is stored for a contact without a conversation: messages are stored in one.
            known = set()
        conversation = turn.conversation
        assert conversation is not None
        if reopen:
            # The user wrote again after the case was closed: the bot takes it back, with fresh context.
            state.transition(conversation=conversation, to=Conversation.State.BOT, reason="user wrote after resolution")
        # (last_activity_at is moved by the finish stage, in the same transaction as the outcome.)
        if known is None and ids:
            known = set(_stored_ids(turn, ids))
        turn.new_messages = _store(turn, conversation, messages, known or set())
    # The conversation since its handoff boundary, newest first (the LLM's history comes from it too),
    # and in it everything the user said that is not answered yet (this burst, or a failed turn).
    context = _context(turn, conversation)
    turn.context_messages = context
    turn.user_messages = [
        m for m in reversed(context) if m.sender == Message.Sender.USER and m.status == Message.Status.RECEIVED
    ]
    turn.query = "\n".join(m.content for m in turn.user_messages if m.content.strip())
    turn.tap = _latest_tap(turn, messages)
    contact = turn.contact or conversation.contact
    turn.contact = contact
    # The language the user writes in now (a confident detection), else the conversation's so far; the
    # finish stage stores it on the conversation.
    turn.language = language.conversation_language(
        turn.query,
        current=conversation.language,
        fallback=contact.language or turn.config.locale[0],
        expected=turn.config.locale,
    )
    if not turn.user_messages:
        turn.silent_reason = "nothing new to answer"
    elif not turn.query and all(m.kind in SILENT_KINDS for m in turn.user_messages):
        turn.silent_reason = "nothing to answer (reaction or status only)"
    elif not turn.query and any(m.kind == "audio" for m in turn.user_messages):
        # A voice note nobody could transcribe (no transcription endpoint, or it failed; a transcribed
        # one has its transcript as content): say so plainly, with the way to a person, instead of
        # searching the documents for nothing.
        turn.fixed_reply_reason = "voice note not transcribed"
        turn.reply_text = _voice_not_understood(turn)
    turn.time("intake_ms", started)


def _latest_tap(turn: Turn, messages: list[tuple[Any, NormalizedMessage]]) -> dict[str, Any] | None:
    """The option the user tapped last among the messages this turn answers: its ``payload`` (the
    option's id) and ``title``. From the burst's events; a retried turn (no events) reads the stored
    messages. Completion gives it to the model and to the tenant's functions."""
    replies = [(m.reply, m.text) for _, m in messages if m.reply]
    if not messages and turn.user_messages:
        stored = Message.objects.for_tenant(turn.tenant).filter(pk__in=[m.pk for m in turn.user_messages])
        rows = stored.order_by("id").values_list("payload__normalized__reply", "content")
        replies = [(reply, text) for reply, text in rows if reply]
    for reply, text in reversed(replies):
        if isinstance(reply, dict) and (reply.get("payload") or reply.get("id")):
            # Web chat's tap names the option by id; its title is the message's text.
            title = str(reply.get("title") or text or "")
            return {"payload": str(reply.get("payload") or reply.get("id")), "title": title}
    return None


def _voice_not_understood(turn: Turn) -> str:
    config = turn.config
    text = phrases.phrase("voice_not_understood", turn.language)
    if config.enable_human_handoff and config.human_handoff_keywords:
        text += " " + phrases.phrase("offer_human", turn.language, keyword=config.human_handoff_keywords[0])
    return text
