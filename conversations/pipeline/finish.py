"""Stage 8: record the outcome in one transaction: message statuses, the inbound events, token
usage and cost (on the reply and summed on the conversation), and the events that say what happened."""

from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from channels_app.models import InboundEvent
from conversations.llm import estimate_cost
from conversations.metrics import count_turn
from conversations.models import Conversation, Message
from conversations.pipeline.turn import Turn
from events.models import Event
from events.services import emit, event_row, insert_sql, inserted
from events.types import EventType


def run(turn: Turn) -> None:
    _record(turn)
    count_turn(turn, _outcome(turn), time.monotonic() - turn.started)


def _outcome(turn: Turn) -> str:
    if turn.ignore_reason:
        return "ignored"
    if turn.failure is not None:
        return "llm_failed"
    if turn.send_error:
        return "send_failed"
    if turn.handoff_reason:
        return "handoff"
    if turn.silent_reason:
        return "silent"
    return "answered"


def _record(turn: Turn) -> None:
    now = timezone.now()
    conversation = turn.conversation
    event_ids = [e.pk for e in turn.inbound_events]
    if turn.ignore_reason:
        with transaction.atomic():
            Message.objects.filter(pk__in=[m.pk for m in turn.new_messages]).update(
                status=Message.Status.STORED, error={"reason": turn.ignore_reason}, updated_at=now
            )
            InboundEvent.objects.filter(pk__in=event_ids).update(
                status=InboundEvent.Status.IGNORED,
                error=turn.ignore_reason,
                processed_at=now,
                attempts=F("attempts") + 1,
            )
        return
    if conversation is None:
        if event_ids:
            InboundEvent.objects.filter(pk__in=event_ids).update(
                status=InboundEvent.Status.PROCESSED, error="", processed_at=now, attempts=F("attempts") + 1
            )
        return
    user_ids = [m.pk for m in turn.user_messages]
    cost = estimate_cost(
        model=turn.model, prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens
    )
    error = None
    if turn.failure is not None:
        error = {"code": turn.failure.code, "message": str(turn.failure), "retryable": turn.failure.retryable}
    reply = turn.reply_message
    turn.timings["total_ms"] = round((time.monotonic() - turn.started) * 1000, 2)
    if turn.inbound_events:
        # From the first message's arrival to the turn's start: the queue, the contact's previous turn,
        # a burst's wait (TURN_DEBOUNCE_SECONDS). What a user waits for besides the turn itself.
        arrived = min(e.received_at for e in turn.inbound_events)
        turn.timings["waited_ms"] = round(
            max((now - arrived).total_seconds() * 1000 - turn.timings["total_ms"], 0.0), 2
        )
    turn.timings["overhead_ms"] = round(
        turn.timings["total_ms"] - turn.timings.get("llm_wait_ms", 0.0) - turn.timings.get("tools_ms", 0.0), 2
    )
    if reply is not None:
        _complete_reply(turn, reply, cost)
    events: list[Event] = []
    if error is not None:
        events.append(
            event_row(
                tenant=turn.tenant,
                type=EventType.MESSAGE_FAILED,
                payload={"conversation_id": str(conversation.pk), "message_ids": user_ids, "stage": "llm", **error},
            )
        )
    if reply is not None:
        if turn.send_error:
            events.append(
                event_row(
                    tenant=turn.tenant,
                    type=EventType.MESSAGE_FAILED,
                    payload={
                        "conversation_id": str(conversation.pk),
                        "message_id": reply.pk,
                        "channel_id": str(turn.channel.pk),
                        "platform": turn.channel.type,
                        "stage": "send",
                        **turn.send_failure,
                        "message": turn.send_error,
                    },
                )
            )
        else:
            events.append(
                sent_event(
                    turn,
                    reply,
                    turn.sources,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    cost_usd=str(cost),
                )
            )
    # One statement (atomic on its own: no transaction to open and commit around it).
    _record_outcome(turn, now=now, event_ids=event_ids, user_ids=user_ids, error=error, cost=cost, events=events)


def sent_event(turn: Turn, message: Message, sources: list[dict[str, Any]], **details: Any) -> Event:
    """``message.sent`` (not written yet): the message the channel accepted, its text and sources, then
    ``details``."""
    return event_row(
        tenant=turn.tenant,
        type=EventType.MESSAGE_SENT,
        payload={
            **turn.message_event(message),
            "sender": message.sender,
            "text": message.content,
            "sources": sources,
            **details,
        },
    )


def emit_sent(turn: Turn, message: Message, sources: list[dict[str, Any]], **details: Any) -> None:
    """``message.sent``, written in the caller's transaction."""
    event = sent_event(turn, message, sources, **details)
    emit(tenant=turn.tenant, type=event.type, payload=event.payload)


def _complete_reply(turn: Turn, reply: Message, cost: Decimal) -> None:
    """The reply row's final state, in memory: ``_record_outcome`` writes it with the rest."""
    reply.content = turn.reply_text
    reply.prompt_tokens = turn.usage.prompt_tokens
    reply.completion_tokens = turn.usage.completion_tokens
    reply.cost_usd = cost
    reply.timings = turn.timings
    reply.payload = {
        **reply.payload,
        "sources": turn.sources,
        "model": turn.model,
        "handoff": bool(turn.handoff_reason),
        "fallback": turn.failure is not None,
        # Passages the answer had (retrieval and search tools); None: retrieval is off. Analytics
        # counts a reply with none, or citing none of them, as a question the assistant could not answer.
        "retrieved": len(turn.passages) if turn.config.enable_rag else None,
    }
    if turn.send_error:
        reply.status = Message.Status.FAILED
        reply.error = {"stage": "send", **turn.send_failure, "message": turn.send_error}
    else:
        reply.status = Message.Status.SENT


def _record_outcome(
    turn: Turn,
    *,
    now: datetime,
    event_ids: list[int],
    user_ids: list[int],
    error: dict[str, Any] | None,
    cost: Decimal,
    events: list[Event],
) -> None:
    """The inbound events processed, the user's messages processed (or failed with ``error``), the reply
    (``_complete_reply``), the conversation's activity and usage, and ``events``, in one statement (six
    round trips before, with the transaction around them)."""
    assert turn.conversation is not None
    inbound, messages, conversations = (
        InboundEvent._meta.db_table,
        Message._meta.db_table,
        Conversation._meta.db_table,
    )
    status = Message.Status.PROCESSED if error is None else Message.Status.FAILED
    reply = turn.reply_message
    params = [
        InboundEvent.Status.PROCESSED, now, turn.tenant.pk, event_ids,
        status, now, None if error is None else json.dumps(error), turn.tenant.pk, user_ids,
        *_reply_values(reply), now, turn.tenant.pk, reply.pk if reply else None,
        now, turn.usage.prompt_tokens, turn.usage.completion_tokens, cost, turn.language, turn.tenant.pk,
        turn.conversation.pk,
    ]  # fmt: skip
    sql = f"""
        WITH inbound AS (
            UPDATE {inbound} SET status = %s, error = '', processed_at = %s, attempts = attempts + 1
            WHERE tenant_id = %s AND id = ANY(%s::bigint[]) RETURNING id
        ), answered AS (
            UPDATE {messages} SET status = %s, updated_at = %s, error = COALESCE(%s::jsonb, error)
            WHERE tenant_id = %s AND id = ANY(%s::bigint[]) RETURNING id
        ), replied AS (
            UPDATE {messages} SET content = %s, prompt_tokens = %s, completion_tokens = %s, cost_usd = %s,
                timings = %s::jsonb, payload = %s::jsonb, status = %s, error = %s::jsonb,
                platform_message_id = %s, updated_at = %s
            WHERE tenant_id = %s AND id = %s RETURNING id
        ), outcome AS (
            UPDATE {conversations} SET last_activity_at = %s, prompt_tokens = prompt_tokens + %s,
                completion_tokens = completion_tokens + %s, cost_usd = cost_usd + %s, language = %s
            WHERE tenant_id = %s AND id = %s RETURNING id
        )
    """  # noqa: S608 (our tables)
    if events:
        insert, event_params = insert_sql(events)
        sql += f", emitted AS ({insert}) SELECT id, event_id FROM emitted"  # noqa: S608 (events.services SQL)
        params += event_params
    else:
        sql += "SELECT id, NULL FROM outcome"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    if events:
        inserted(events, returned)


def _reply_values(reply: Message | None) -> list[Any]:
    if reply is None:
        return [None] * 9
    return [
        reply.content, reply.prompt_tokens, reply.completion_tokens, reply.cost_usd, json.dumps(reply.timings),
        json.dumps(reply.payload), reply.status, json.dumps(reply.error), reply.platform_message_id,
    ]  # fmt: skip
