"""Stage 8: record the outcome in one transaction: message statuses, the inbound events, token
usage and cost (on the reply and summed on the conversation), and the events that say what happened."""

from __future__ import annotations

import time

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from channels_app.models import InboundEvent
from config import metrics
from conversations.llm import estimate_cost
from conversations.models import Conversation, Message
from conversations.pipeline.turn import Turn
from events.services import emit
from events.types import EventType


def run(turn: Turn) -> None:
    _record(turn)
    metrics.incr("turns_total", platform=turn.channel.type, outcome=_outcome(turn))


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
    with transaction.atomic():
        event_ids = [e.pk for e in turn.inbound_events]
        if turn.ignore_reason:
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
        if event_ids:
            InboundEvent.objects.filter(pk__in=event_ids).update(
                status=InboundEvent.Status.PROCESSED, error="", processed_at=now, attempts=F("attempts") + 1
            )
        if conversation is None:
            return
        user_ids = [m.pk for m in turn.user_messages]
        if turn.failure is not None:
            error = {"code": turn.failure.code, "message": str(turn.failure), "retryable": turn.failure.retryable}
            Message.objects.filter(pk__in=user_ids).update(status=Message.Status.FAILED, error=error, updated_at=now)
            emit(
                tenant=turn.tenant,
                type=EventType.MESSAGE_FAILED,
                payload={
                    "conversation_id": str(conversation.pk),
                    "message_ids": user_ids,
                    "stage": "llm",
                    **error,
                },
            )
        elif user_ids:
            Message.objects.filter(pk__in=user_ids).update(status=Message.Status.PROCESSED, updated_at=now)
        cost = estimate_cost(
            model=turn.model, prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens
        )
        reply = turn.reply_message
        turn.timings["total_ms"] = round((time.monotonic() - turn.started) * 1000, 2)
        turn.timings["overhead_ms"] = round(
            turn.timings["total_ms"] - turn.timings.get("llm_wait_ms", 0.0) - turn.timings.get("tools_ms", 0.0), 2
        )
        if reply is not None:
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
            }
            if turn.send_error:
                reply.status = Message.Status.FAILED
                reply.error = {"stage": "send", **turn.send_failure, "message": turn.send_error}
            else:
                reply.status = Message.Status.SENT
            reply.save(
                update_fields=[
                    "content", "prompt_tokens", "completion_tokens", "cost_usd", "timings", "payload", "status",
                    "error", "platform_message_id", "updated_at",
                ]
            )  # fmt: skip
            base = {
                "conversation_id": str(conversation.pk),
                "message_id": reply.pk,
                "channel_id": str(turn.channel.pk),
                "platform": turn.channel.type,
            }
            if turn.send_error:
                emit(
                    tenant=turn.tenant,
                    type=EventType.MESSAGE_FAILED,
                    payload={**base, "stage": "send", **turn.send_failure, "message": turn.send_error},
                )
            else:
                emit(
                    tenant=turn.tenant,
                    type=EventType.MESSAGE_SENT,
                    payload={
                        **base,
                        "platform_message_id": reply.platform_message_id,
                        "sender": reply.sender,
                        "text": reply.content,
                        "sources": turn.sources,
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "cost_usd": str(cost),
                    },
                )
        Conversation.objects.filter(pk=conversation.pk).update(
            last_activity_at=now,
            prompt_tokens=F("prompt_tokens") + turn.usage.prompt_tokens,
            completion_tokens=F("completion_tokens") + turn.usage.completion_tokens,
            cost_usd=F("cost_usd") + cost,
        )
