"""Stage 7b: the files and options to tap that the turn's tenant functions gave the user, sent after
the text reply (``conversations.tools.split_answer`` read and checked them).

Each is a message of its own in the conversation (sender ``assistant``; kind ``image``, ``document``,
``audio``, ``video`` or ``choices``; payload ``media`` or ``choices`` as an agent's sends have them, so
the inbox shows them), stored ``queued`` before it is sent, like the reply. It goes through the channels
area's one way to send (``send_media`` by link: the platform fetches the file itself; ``send_choices``),
which checks the platform's limits and the customer-service window before any call, so the bot never
sends outside the window. Then ``sent`` with ``message.sent``, or ``failed`` with the reason and
``message.failed``, in one transaction. A refused or failed one is logged and recorded and never
touches the text reply, nor the others. Nothing is sent after a reply that failed or was not
delivered (an image without the words that introduce it); they are recorded as failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from django.db import transaction

from channels_app.adapters.base import (
    InvalidChoices,
    InvalidMedia,
    MediaSendAdapter,
    SendError,
    SendResult,
    get_adapter,
)
from channels_app.services import outbound_media, sending
from conversations.models import Message
from conversations.pipeline.completion import storable
from conversations.pipeline.turn import Turn
from conversations.tools import FunctionSend
from events.services import emit
from events.types import EventType

logger = logging.getLogger(__name__)


def run(turn: Turn) -> None:
    if not turn.function_sends or turn.conversation is None or turn.ignore_reason or turn.reply_message is None:
        return
    started = time.monotonic()
    for send in turn.function_sends:
        _deliver(turn, send)
    turn.time("function_sends_ms", started)


def _not_sendable(turn: Turn, send: FunctionSend) -> dict[str, Any] | None:
    """Why ``send`` is not even tried (a failure record), or None."""
    if send.refused:
        code = "invalid_choices" if send.kind == "choices" else "invalid_media"
        return {"code": code, "permanent": True, "message": send.refused}
    if turn.failure is not None:
        return {"code": "reply_failed", "permanent": True, "message": "not sent: the assistant's answer failed"}
    if not turn.delivered:
        failure = {
            "code": "reply_not_delivered",
            "permanent": True,
            "message": f"not sent: the reply before it was not delivered ({turn.send_error})",
        }
        if turn.send_failure.get("reason"):
            failure["reason"] = turn.send_failure["reason"]
        return failure
    return None


def _row(turn: Turn, send: FunctionSend) -> Message:
    """The message, stored ``queued`` (its outcome is recorded by ``_record``)."""
    if send.kind == "choices":
        text = sending.choices_as_text(send.choices) if send.choices else str(send.described.get("body", ""))
        payload: dict[str, Any] = {"choices": send.described}
    else:
        text = str(send.described.get("caption", ""))
        # Never a storage path of the function's choosing: the file is the platform's to fetch.
        media = {**send.described, "kind": send.kind, "storage_path": "", "size": None}
        payload = {"media": media}
    payload["function"] = send.function
    payload["in_reply_to"] = [m.pk for m in turn.user_messages]
    message = turn.message_row(
        direction=Message.Direction.OUTBOUND,
        sender=Message.Sender.ASSISTANT,
        kind=send.kind,
        content=storable(text)[:4096],
        payload=storable(payload),
        status=Message.Status.QUEUED,
    )
    message.save()
    return message


def _deliver(turn: Turn, send: FunctionSend) -> None:
    failure = _not_sendable(turn, send)
    if failure is not None:
        with transaction.atomic():
            _record(turn, send, _row(turn, send), None, failure)
        logger.warning(
            "function's %s not sent", send.kind, extra={"function": send.function, "error": failure["message"]}
        )
        return
    message = _row(turn, send)
    result: SendResult | None = None
    try:
        result = _send(turn, send)
    except (InvalidMedia, InvalidChoices) as exc:
        failure = {"code": "invalid_choices" if send.kind == "choices" else "invalid_media", "permanent": True}
        failure["message"] = str(exc)
    except SendError as exc:
        failure = {"code": exc.code, "permanent": exc.permanent, "message": str(exc)}
        if exc.details.get("reason"):
            failure["reason"] = exc.details["reason"]
    except Exception as exc:  # an adapter bug: recorded like any failure, the turn goes on
        failure = {"code": "internal_error", "permanent": False, "message": f"{type(exc).__name__}: {exc}"}
        logger.exception("function's %s not sent", send.kind, extra={"message_id": message.pk})
    if failure is not None:
        logger.warning(
            "function's %s not sent",
            send.kind,
            extra={"message_id": message.pk, "function": send.function, "error": failure["message"]},
        )
    with transaction.atomic():
        _record(turn, send, message, result, failure)


def _send(turn: Turn, send: FunctionSend) -> SendResult:
    contact = turn.contact
    assert contact is not None
    channel = turn.channel
    if send.choices is not None:
        return sending.send_choices(channel=channel, recipient_id=contact.external_id, choices=send.choices)
    media = send.media
    assert media is not None
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, MediaSendAdapter):
        raise SendError(
            f"{channel.get_type_display()} channels cannot send files", code="not_supported", permanent=True
        )
    # The platform's type rules for the declared type (the platform fetches the link itself, and
    # applies its size limit then: a file over it comes back as a failed status).
    adapter.check_media(replace(media, content=b""))
    return outbound_media.send_media(channel=channel, recipient_id=contact.external_id, media=media)


def _record(
    turn: Turn, send: FunctionSend, message: Message, result: SendResult | None, failure: dict[str, Any] | None
) -> None:
    """The message's outcome and its event (the caller's transaction)."""
    ids = list(result.platform_message_ids) if result is not None else []
    message.platform_message_id = ids[0] if ids else ""
    if len(ids) > 1:  # Messenger sends a caption as a message of its own: its statuses must find it too
        message.payload = {**message.payload, "platform_message_ids": ids}
    message.status = Message.Status.FAILED if failure else Message.Status.SENT
    message.error = {"stage": "send", **failure} if failure else {}
    message.save(update_fields=["platform_message_id", "payload", "status", "error", "updated_at"])
    event = {
        **turn.message_event(message),
        "sender": message.sender,
        "kind": message.kind,
        "function": send.function,
    }
    if failure:
        emit(tenant=turn.tenant, type=EventType.MESSAGE_FAILED, payload={**event, "stage": "send", **failure})
    else:
        emit(tenant=turn.tenant, type=EventType.MESSAGE_SENT, payload={**event, "text": message.content})
