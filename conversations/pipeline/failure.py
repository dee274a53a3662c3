"""What a turn whose stage crashed (a bug, bad data) leaves behind.

The traceback goes to the log with the turn's correlation id; the inbound events are marked
``failed`` with the error; the user's messages are marked ``failed`` (so ``POST …/retry/`` can answer
them, and the next turn does not pick them up again: one poison message must not block its
conversation); ``message.failed`` names the stage; and the user gets the fallback reply, unless a
reply already reached them or nobody was to answer (inactive channel, a human owns the conversation).
"""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.utils import timezone

from channels_app.adapters.base import SendError
from channels_app.models import InboundEvent
from conversations import outbound
from conversations.metrics import count_turn
from conversations.models import Conversation, Message
from conversations.pipeline.completion import FALLBACK_TEXT
from conversations.pipeline.finish import emit_sent
from conversations.pipeline.turn import Turn
from events.services import emit
from events.types import EventType

logger = logging.getLogger(__name__)


def handle_crash(turn: Turn, exc: Exception) -> None:
    stage = turn.stage or "pipeline"
    inbound_ids = [e.pk for e in turn.inbound_events]
    logger.exception("turn failed", extra={"inbound_ids": inbound_ids, "stage": stage})
    count_turn(turn, "error", time.monotonic() - turn.started)
    _record(turn, stage=stage, reason=f"{type(exc).__name__}: {exc}"[:2000], exc_type=type(exc).__name__)
    if not (turn.delivered or turn.ignore_reason or turn.silent_reason):
        _send_fallback(turn)


def _record(turn: Turn, *, stage: str, reason: str, exc_type: str) -> None:
    now = timezone.now()
    # The exception's text stays in the log and on the inbound event (operators); the tenant's API,
    # transcripts and webhooks get the stage and the kind of failure only.
    error = {
        "code": "turn_error",
        "stage": stage,
        "message": f"the turn failed in its {stage} stage ({exc_type})",
        "retryable": True,
    }
    user_ids = [m.pk for m in turn.user_messages]
    with transaction.atomic():
        InboundEvent.objects.filter(pk__in=[e.pk for e in turn.inbound_events]).update(
            status=InboundEvent.Status.FAILED, error=reason, processed_at=now
        )
        if turn.delivered:
            # The answer reached the user (the crash came after it): it must not be given twice.
            Message.objects.filter(pk__in=user_ids, status=Message.Status.RECEIVED).update(
                status=Message.Status.PROCESSED, updated_at=now
            )
        else:
            Message.objects.filter(pk__in=user_ids, status=Message.Status.RECEIVED).update(
                status=Message.Status.FAILED, error=error, updated_at=now
            )
        reply = turn.reply_message
        if reply is not None:
            if turn.delivered:
                Message.objects.filter(pk=reply.pk).update(
                    status=Message.Status.SENT, platform_message_id=reply.platform_message_id, updated_at=now
                )
            else:
                Message.objects.filter(pk=reply.pk).update(status=Message.Status.FAILED, error=error, updated_at=now)
        emit(
            tenant=turn.tenant,
            type=EventType.MESSAGE_FAILED,
            payload={
                "conversation_id": str(turn.conversation.pk) if turn.conversation else None,
                "message_ids": user_ids,
                "inbound_event_ids": [e.pk for e in turn.inbound_events],
                **error,
            },
        )


def _send_fallback(turn: Turn) -> None:
    """Tell the user (best effort: the turn is already recorded as failed)."""
    message = _store_fallback(turn)
    try:
        result = outbound.send_text(
            channel=turn.channel,
            recipient_id=turn.sender_external_id,
            text=FALLBACK_TEXT,
            message_id=message.pk if message else None,
        )
    except Exception as exc:
        logger.warning("fallback reply not delivered", extra={"error": str(exc)[:300]})
        if message is not None:
            failure = {"code": exc.code, "permanent": exc.permanent} if isinstance(exc, SendError) else {}
            Message.objects.filter(pk=message.pk).update(
                status=Message.Status.FAILED,
                error={"stage": "send", **failure, "message": str(exc)[:500]},
                updated_at=timezone.now(),
            )
        return
    if message is None:
        return
    message.status = Message.Status.SENT
    message.platform_message_id = result.platform_message_ids[0] if result.platform_message_ids else ""
    with transaction.atomic():
        message.save(update_fields=["status", "platform_message_id", "updated_at"])
        emit_sent(turn, message, [], fallback=True)


def _store_fallback(turn: Turn) -> Message | None:
    """The fallback as a transcript row, when the conversation exists (the crash may have rolled back
    its creation, or the database may be what failed: then the user is still told)."""
    conversation = turn.conversation
    if conversation is None:
        return None
    try:
        if not Conversation.objects.filter(pk=conversation.pk).exists():
            return None
        return turn.store_assistant_text(
            FALLBACK_TEXT, {"fallback": True, "in_reply_to": [m.pk for m in turn.user_messages]}
        )
    except Exception:
        logger.exception("fallback reply not stored")
        return None
