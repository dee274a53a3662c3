"""Stage 7: send the reply through the conversation's channel (the typing stage went first).

The reply (and each tool call of the turn) is stored before sending, so a crash mid-send leaves a
``queued`` row to inspect rather than nothing; the platform's id is recorded once it accepts.
Streaming providers on streaming channels (web chat) send the text as it is generated.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import datetime

from django.db import transaction

from channels_app.adapters.base import SendError, SendResult
from channels_app.services import window
from conversations import outbound
from conversations.llm.base import LLMError
from conversations.models import Message
from conversations.pipeline import completion
from conversations.pipeline.turn import Turn
from events.services import emit
from events.types import EventType

logger = logging.getLogger(__name__)


def _store_tool_records(turn: Turn) -> None:
    """The turn's tool calls not stored yet, each with ``tool.called`` (the caller's transaction)."""
    conversation = turn.conversation
    assert conversation is not None
    records = turn.tool_records[turn.tool_records_stored :]
    if not records:
        return
    tool_messages = Message.objects.bulk_create(
        [
            turn.message_row(
                direction=Message.Direction.OUTBOUND,
                sender=Message.Sender.TOOL,
                kind="tool_call",
                content=record["name"],
                payload=record,
                status=Message.Status.STORED,
                error={"message": record["error"]} if record["error"] else {},
                timings={"duration_ms": record["duration_ms"]},
            )
            for record in records
        ]
    )
    turn.tool_records_stored = len(turn.tool_records)
    for message, record in zip(tool_messages, records, strict=True):
        emit(
            tenant=turn.tenant,
            type=EventType.TOOL_CALLED,
            payload={
                "conversation_id": str(conversation.pk),
                "message_id": message.pk,
                "name": record["name"],
                "arguments": record["arguments"],
                "ok": record["ok"],
                "error": record["error"],
                "status_code": record["status_code"],
                "duration_ms": record["duration_ms"],
            },
        )


def _store_pending(turn: Turn) -> Message:
    assert turn.conversation is not None
    # A transaction only when tool calls are stored with it (two statements less per plain turn).
    with transaction.atomic() if turn.tool_records_stored < len(turn.tool_records) else nullcontext():
        _store_tool_records(turn)
        return turn.store_assistant_text(
            turn.reply_text,
            {
                "sources": turn.sources,
                "provider": turn.provider_name,
                "model": turn.model,
                "handoff": bool(turn.handoff_reason),
                "fallback": turn.failure is not None,
                "in_reply_to": [m.pk for m in turn.user_messages],
            },
        )


def run(turn: Turn) -> None:
    if turn.ignore_reason or turn.silent_reason or not (turn.reply_text or turn.reply_stream):
        return
    turn.typing_done()  # the read mark and the indicator reach the contact before the reply
    started = time.monotonic()
    contact = turn.contact
    assert contact is not None
    reply_to = turn.user_messages[-1].platform_message_id if turn.user_messages else ""
    message = _store_pending(turn)
    turn.reply_message = message
    result: SendResult | None = None
    try:
        if turn.reply_stream is not None:
            result = _send_stream(turn, message, contact.external_id)
        else:
            result = outbound.send_text(
                channel=turn.channel,
                recipient_id=contact.external_id,
                text=turn.reply_text,
                sources=turn.sources,
                reply_to_message_id=reply_to,
                message_id=message.pk,
                wrote_at=_wrote_at(turn),
            )
        # The reply *is* the handoff notice (handoff_check): no second "handoff" notice after it (the
        # web chat widget showed the same words twice, as a message and as a notice).
    except SendError as exc:
        turn.send_error = str(exc)
        turn.send_failure = {"code": exc.code, "permanent": exc.permanent}
        if exc.details.get("reason"):
            turn.send_failure["reason"] = exc.details["reason"]
        logger.warning("reply not delivered", extra={"message_id": message.pk, "error": str(exc), "code": exc.code})
    except Exception as exc:  # an adapter bug must still leave a visible failed message
        turn.send_error = f"{type(exc).__name__}: {exc}"
        turn.send_failure = {"code": "internal_error", "permanent": False}
        logger.exception("reply not delivered", extra={"message_id": message.pk})
    turn.delivered = not turn.send_error
    if result is not None and result.platform_message_ids:
        message.platform_message_id = result.platform_message_ids[0]
        if len(result.platform_message_ids) > 1:
            # A reply split at the platform's length limit: every part's status update must find it.
            message.payload = {**message.payload, "platform_message_ids": list(result.platform_message_ids)}
    turn.time("send_ms", started)


def _wrote_at(turn: Turn) -> datetime | None:
    """When the contact wrote the newest message this turn answers (None for a retried turn, which
    has no events: the window is then read)."""
    times = [window.message_time(e.received_at, e.normalized.get("timestamp")) for e in turn.inbound_events]
    return max(times, default=None)


def _send_stream(turn: Turn, message: Message, recipient_id: str) -> SendResult:
    """Stream the answer into the reply's bubble. A model that wrote some text and then called tools
    goes on (the calls run, the next answer rewrites the same bubble); a stream that breaks off is
    replaced by the fallback, never left standing as if it were the whole answer."""
    while True:
        stream = turn.reply_stream
        assert stream is not None
        try:
            result = outbound.stream_text(
                channel=turn.channel,
                recipient_id=recipient_id,
                chunks=turn.stream_deltas(),
                message_id=message.pk,
            )
            answer = stream.completion()
        except LLMError as exc:
            # The provider broke off mid-answer: say so with the fallback, keep the messages for a retry.
            completion.fail(turn, exc)
            return outbound.send_text(
                channel=turn.channel, recipient_id=recipient_id, text=turn.reply_text, message_id=message.pk
            )
        turn.reply_stream = None
        if not completion.continue_after_stream(turn, answer):
            break
        with transaction.atomic():
            _store_tool_records(turn)
        if turn.reply_stream is None:
            # A whole answer (a round that did not stream, the handoff notice, the fallback).
            return outbound.send_text(
                channel=turn.channel,
                recipient_id=recipient_id,
                text=turn.reply_text,
                sources=turn.sources,
                message_id=message.pk,
            )
    turn.usage.add(answer.usage)
    turn.model = answer.model or turn.model
    streamed = completion.storable(answer.text)
    completion.finish_text(turn, answer)
    # What the user saw is the streamed text; the sources go alongside where the channel shows them.
    turn.reply_text = streamed.strip() or turn.reply_text
    if turn.sources:
        outbound.send_notice(
            channel=turn.channel,
            recipient_id=recipient_id,
            kind="sources",
            data={"message_id": message.pk, "sources": turn.sources},
        )
    return result
