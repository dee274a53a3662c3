"""The one seam through which conversations send anything to a contact, whatever the channel.

Everything goes through ``channels_app.services``: ``send_reply`` for plain text (credentials,
splitting at platform limits, disabling on bad tokens), ``call_adapter`` for what richer UIs (web
chat) can show: a message with its sources and author (``send_message``), streamed text
(``stream_text``) and notices (``send_notice``).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.db import connection

from channels_app import services as channel_services
from channels_app.adapters.base import (
    NoticeAdapter,
    RichMessageAdapter,
    SendError,
    SendResult,
    StreamingAdapter,
    get_adapter,
)
from channels_app.models import Channel

logger = logging.getLogger(__name__)


def _adapter(channel: Channel) -> Any:
    try:
        return get_adapter(channel.type)
    except KeyError:
        raise SendError(f"no channel adapter is installed for '{channel.type}'", permanent=True) from None


def can_stream(channel: Channel) -> bool:
    try:
        return isinstance(get_adapter(channel.type), StreamingAdapter)
    except KeyError:
        return False


def send_text(
    *,
    channel: Channel,
    recipient_id: str,
    text: str,
    sources: list[dict[str, Any]] | None = None,
    reply_to_message_id: str = "",
    message_id: int | None = None,
    role: str = "assistant",
    wrote_at: datetime | None = None,
) -> SendResult:
    """Send a text (with its sources where the channel can show them). Raises SendError.

    ``role`` (assistant | agent) reaches adapters whose UI shows who wrote (web chat); ``wrote_at``:
    when the message this answers was written, if known (spares reading the customer-service window)."""
    if not isinstance(_adapter(channel), RichMessageAdapter):
        return channel_services.send_reply(
            channel=channel,
            recipient_id=recipient_id,
            text=text,
            reply_to_message_id=reply_to_message_id,
            human=role == "agent",  # Messenger: an agent may answer with HUMAN_AGENT after 24 h
            wrote_at=wrote_at,
        )
    channel_services.guard_sendable(channel)
    return channel_services.call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.send_message(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            text=text,
            sources=sources or [],
            message_id=message_id,
            credentials=credentials,
            role=role,
        ),
    )


def stream_text(
    *,
    channel: Channel,
    recipient_id: str,
    chunks: Iterable[str],
    message_id: int | None = None,
) -> SendResult:
    """Show the reply as it is generated (only for channels where ``can_stream``). Raises SendError.

    The sources follow in a ``sources`` notice once the answer is complete (they are only known then)."""
    _adapter(channel)
    channel_services.guard_sendable(channel)
    return channel_services.call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.stream_text(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            chunks=chunks,
            credentials=credentials,
            message_id=message_id,
        ),
    )


def send_notice(*, channel: Channel, recipient_id: str, kind: str, data: dict[str, Any]) -> None:
    """Best effort: a notice the channel's own UI can show (web chat). Other channels: nothing."""
    try:
        if not isinstance(get_adapter(channel.type), NoticeAdapter):
            return
        channel_services.call_adapter(
            channel=channel,
            fn=lambda adapter, credentials: adapter.send_notice(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                kind=kind,
                data=data,
                credentials=credentials,
            ),
        )
    except Exception as exc:
        logger.warning("notice not delivered", extra={"channel_id": str(channel.pk), "kind": kind, "error": str(exc)})


def send_typing(*, channel: Channel, recipient_id: str, reply_to_message_id: str) -> None:
    """Best effort typing indicator before a reply: a failure here must not cost the reply."""
    try:
        channel_services.send_typing(
            channel=channel, recipient_id=recipient_id, reply_to_message_id=reply_to_message_id
        )
    except Exception as exc:
        logger.warning("typing indicator not delivered", extra={"channel_id": str(channel.pk), "error": str(exc)})


# Typing indicators in flight at once per process, as webhook_asgi keeps its pool: created at import,
# threads started on demand. At most one call per turn thread (WORKER_CONCURRENCY, 8 in `make run`); a
# thread starts only when none is idle, so the pool grows to what is in flight.
_typing_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="typing")


def send_typing_soon(*, channel: Channel, recipient_id: str, reply_to_message_id: str) -> Future[float]:
    """``send_typing`` on a thread of this process, so that retrieval and the LLM do not wait for the
    platform's round trip (Meta's Graph API: ~100-300 ms); the future gives the call's duration in
    ms. Whoever sends the reply waits for it first (``Turn.typing_done``): the read mark and the
    indicator never arrive after the reply. Runs in the caller's context (its correlation id), and
    closes any database connection the call opened (a bad token disables the channel)."""
    context = contextvars.copy_context()
    return _typing_pool.submit(context.run, _typing_call, channel, recipient_id, reply_to_message_id)


def _typing_call(channel: Channel, recipient_id: str, reply_to_message_id: str) -> float:
    started = time.monotonic()
    try:
        send_typing(channel=channel, recipient_id=recipient_id, reply_to_message_id=reply_to_message_id)
    finally:
        connection.close()  # this thread's own; nothing to close unless the call used the database
    return (time.monotonic() - started) * 1000
