"""The one object every stage of a turn reads and writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connection

from conversations.llm.base import ContextPassage, LLMError, LLMStream, Usage
from conversations.models import Message
from conversations.pipeline import rows

if TYPE_CHECKING:
    from concurrent.futures import Future

    from channels_app.models import Channel, InboundEvent
    from conversations.models import Contact, Conversation, TenantFunction
    from conversations.pipeline.completion import ToolLoop
    from conversations.tools import FunctionSend
    from tenants.models import Tenant
    from tenants.settings_schema import TenantSettings

logger = logging.getLogger(__name__)


@dataclass
class Turn:
    tenant: Tenant
    channel: Channel
    sender_external_id: str
    inbound_events: list[InboundEvent] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stage: str = ""  # the stage running (named in the record of a turn that crashed)

    # resolve
    ignore_reason: str = ""  # set: messages are recorded, nothing is answered
    # intake
    contact: Contact | None = None
    conversation: Conversation | None = None
    new_messages: list[Message] = field(default_factory=list)
    user_messages: list[Message] = field(default_factory=list)  # unanswered, oldest first
    context_messages: list[Message] = field(default_factory=list)  # since the boundary, newest first
    query: str = ""
    # The option the user tapped in the messages this turn answers (the latest): {"payload", "title"}.
    tap: dict[str, Any] | None = None
    language: str = "en"
    # The tenant's active functions, when loaded with the turn's events (else completion asks).
    functions: dict[str, TenantFunction] | None = None
    # typing: the indicator in flight (outbound.send_typing_soon) until the reply waits for it
    typing: Future[float] | None = None
    # handoff check / completion
    handoff_reason: str = ""
    silent_reason: str = ""  # the bot does not answer (agent owns it, nothing to answer, ...)
    fixed_reply_reason: str = ""  # set: reply_text is the answer as it is (no retrieval, no LLM)
    passages: list[ContextPassage] = field(default_factory=list)
    provider_name: str = ""
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    tool_records: list[dict[str, Any]] = field(default_factory=list)
    tool_records_stored: int = 0
    # Files and options the turn's function calls gave the user, sent after the reply (function_sends).
    function_sends: list[FunctionSend] = field(default_factory=list)
    reply_text: str = ""
    reply_stream: LLMStream | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    failure: LLMError | None = None
    tool_loop: ToolLoop | None = None
    # reply
    reply_message: Message | None = None
    delivered: bool = False  # the channel accepted the reply (a later crash must not answer again)
    send_error: str = ""
    # What a tenant's system needs to act on a refused send: code, permanent, reason (outside_window).
    send_failure: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> TenantSettings:
        return self.tenant.config

    @property
    def answering(self) -> bool:
        """Stages after the handoff check run only while this holds."""
        return not (self.ignore_reason or self.silent_reason or self.handoff_reason or self.fixed_reply_reason)

    def time(self, name: str, since: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + (time.monotonic() - since) * 1000, 2)

    def typing_done(self) -> None:
        """Wait for the typing indicator the typing stage sent in the background: before anything
        reaches the contact, and at the end of the turn. ``typing_ms`` is the indicator's own call;
        ``typing_wait_ms`` what the turn waited for it (0 while retrieval and the LLM took longer)."""
        if self.typing is None:
            return
        future, self.typing = self.typing, None
        started = time.monotonic()
        try:
            self.timings["typing_ms"] = round(future.result(), 2)  # the call's own failures are logged there
        except Exception as exc:  # never the turn's failure (nor hiding a stage's, at the end of a crashed turn)
            logger.warning("typing indicator thread failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        self.time("typing_wait_ms", started)

    def message_row(self, **fields: Any) -> Message:
        """A transcript row of this turn's conversation and channel, not saved yet (stored one by one
        or in bulk by the caller)."""
        return Message(tenant_id=self.tenant.pk, conversation=self.conversation, channel=self.channel, **fields)

    def store_assistant_text(self, content: str, payload: dict[str, Any]) -> Message:
        """An assistant's text to the user, stored ``queued`` before it is sent (a crash mid-send then
        leaves a row to inspect, not nothing)."""
        message = self.message_row(
            direction=Message.Direction.OUTBOUND,
            sender=Message.Sender.ASSISTANT,
            kind="text",
            content=content,
            status=Message.Status.QUEUED,
            payload=payload,
        )
        # One INSERT, as objects.create (the row is new), without the ORM's per-save query building.
        sql, params = rows.insert_sql(Message, [message], returning=["id"])
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows.inserted([message], [cursor.fetchone()[0]])
        return message

    def message_event(self, message: Message) -> dict[str, Any]:
        """What a ``message.*`` event of this turn says first: which message, in which conversation,
        on which channel and platform."""
        return {
            "conversation_id": str(message.conversation_id),
            "message_id": message.pk,
            "channel_id": str(self.channel.pk),
            "platform": self.channel.type,
            "platform_message_id": message.platform_message_id,
        }

    def stream_deltas(self) -> Iterator[str]:
        """The streamed text as it arrives. A stream that ends without a finish reason was cut off (a
        close-delimited body ends like a whole one): LLMError, so that the channel never shows the
        part as a complete answer."""
        stream = self.reply_stream
        assert stream is not None
        yield from stream.deltas()
        if not stream.completion().finish_reason:
            raise LLMError("the LLM provider's answer broke off", retryable=True, code="llm_incomplete")
