"""Sending: the one way anything reaches a platform (``call_adapter``), text replies and typing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.utils import timezone

from channels_app.adapters.base import (
    Choices,
    InteractiveAdapter,
    MessageTagAdapter,
    SendError,
    SendResult,
    TypingAdapter,
    get_adapter,
)
from channels_app.models import Channel
from channels_app.secrets import with_channel_secret
from channels_app.services import window
from channels_app.services.channels import channel_disable_sending
from tenants.secrets import SecretError

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _credentials_call(channel: Channel, call: Callable[[dict[str, str]], Any]) -> Any:
    try:
        return with_channel_secret(channel=channel, fn=call)
    except SecretError as exc:
        raise SendError(f"channel credentials unavailable: {exc}", code="no_credentials", permanent=True) from None


def call_adapter(*, channel: Channel, fn: Callable[[Any, dict[str, str]], T]) -> T:
    """``fn(adapter, credentials)`` for the channel: the one way anything is sent to a platform.

    Credentials are decrypted only for adapters that need them (web chat has none: no query); a
    missing credential is a permanent SendError; an invalid token disables the channel's sending
    (``channel.disabled`` event) before the SendError goes on to the caller."""
    adapter = get_adapter(channel.type)
    try:
        if not adapter.needs_credentials:
            return fn(adapter, {})
        return _credentials_call(channel, lambda credentials: fn(adapter, credentials))
    except SendError as exc:
        if exc.disable_channel:
            channel_disable_sending(channel=channel, reason=str(exc))
        raise


def guard_sendable(channel: Channel) -> None:
    if channel.sending_disabled_reason:
        raise SendError(
            f"sending is disabled for this channel: {channel.sending_disabled_reason}",
            code="channel_disabled",
            permanent=True,
        )


def send_reply(
    *,
    channel: Channel,
    recipient_id: str,
    text: str,
    reply_to_message_id: str = "",
    human: bool = False,
    wrote_at: datetime | None = None,
) -> SendResult:
    """Send a free-form text reply through the channel's adapter (split at the platform limit).

    The contact's customer-service window is checked first (``window.free_form_tag``): outside it
    nothing is sent and OutsideWindow (``outside_customer_service_window``) is raised; a ``human``
    agent's reply beyond Messenger's 24 hours goes with the HUMAN_AGENT tag while that is allowed.
    Raises SendError: ``permanent`` ones must not be retried (outside the window, bad token, ...);
    an invalid token disables the channel's sending first (``channel.disabled`` event). ``wrote_at``:
    when the message this answers was written, if the caller knows (``window.window_state``)."""
    guard_sendable(channel)
    tag = window.free_form_tag(channel=channel, recipient_id=recipient_id, human=human, wrote_at=wrote_at)
    if tag:
        return call_adapter(
            channel=channel,
            fn=lambda adapter, credentials: _tagged(adapter).send_tagged_text(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                text=text,
                tag=tag,
                credentials=credentials,
            ),
        )
    return call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.send_text(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            text=text,
            credentials=credentials,
            reply_to_message_id=reply_to_message_id,
        ),
    )


def send_choices(*, channel: Channel, recipient_id: str, choices: Choices, human: bool = False) -> SendResult:
    """Options to tap (WhatsApp reply buttons or a list, Messenger quick replies); a tap comes back as a
    message whose ``reply.payload`` is the option's id. Checked against the platform's limits
    (InvalidChoices) and the window (OutsideWindow: options are free-form, never tagged) before any
    call. A channel without the ability gets the options as numbered text."""
    guard_sendable(channel)
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, InteractiveAdapter):
        return send_reply(channel=channel, recipient_id=recipient_id, text=choices_as_text(choices), human=human)
    adapter.check_choices(choices)
    if window.free_form_tag(channel=channel, recipient_id=recipient_id, human=human):
        state = window.window_state(channel=channel, recipient_id=recipient_id)
        raise window.OutsideWindow(
            "options to tap need the 24-hour window; beyond it an agent can only write text or send a template",
            last_inbound_at=state.last_inbound_at,
            closed_at=state.closes_at,
        )
    return call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.send_choices(
            channel_external_id=channel.external_id, recipient_id=recipient_id, choices=choices, credentials=credentials
        ),
    )


def choices_as_text(choices: Choices) -> str:
    """The options as numbered lines, for channels that cannot show buttons, and for the transcript."""
    lines = [
        f"{i}. {o.title}" + (f" ({o.description})" if o.description else "") for i, o in enumerate(choices.options, 1)
    ]
    return "\n\n".join(part for part in (choices.header, choices.body, "\n".join(lines), choices.footer) if part)


def _tagged(adapter: Any) -> MessageTagAdapter:
    if not isinstance(adapter, MessageTagAdapter):
        raise SendError(f"the {adapter.platform} adapter cannot send tagged messages", permanent=True)
    return adapter


def send_typing(
    conversation: Any = None,
    *,
    channel: Channel | None = None,
    recipient_id: str = "",
    reply_to_message_id: str = "",
) -> bool:
    """Best effort "seen + typing" before a reply; never fails the turn (but a bad token disables).

    ``send_typing(conversation)`` (the agent inbox) finds the channel, the contact and their latest
    message itself (WhatsApp's indicator marks that message read), and sends nothing once the
    customer-service window has closed (Meta would refuse it). The turn pipeline passes ``channel``,
    ``recipient_id`` and the message it answers. WhatsApp: mark-as-read with ``typing_indicator``;
    Messenger: ``mark_seen`` then ``typing_on``; web chat: its typing notice."""
    if conversation is not None:
        channel = conversation.channel
        recipient_id = conversation.contact.external_id
    if channel is None or channel.sending_disabled_reason:
        return False
    if not isinstance(_adapter_or_none(channel), TypingAdapter):
        return False
    if conversation is not None:
        state = window.window_state(channel=channel, recipient_id=recipient_id)
        if not state.is_open(timezone.now()):
            return False
        reply_to_message_id = reply_to_message_id or window.last_inbound_message_id(
            channel=channel, recipient_id=recipient_id
        )
    sending = channel
    try:
        call_adapter(
            channel=sending,
            fn=lambda adapter, credentials: adapter.send_typing(
                channel_external_id=sending.external_id,
                recipient_id=recipient_id,
                reply_to_message_id=reply_to_message_id,
                credentials=credentials,
            ),
        )
    except SendError as exc:
        logger.warning("typing indicator not sent", extra={"channel_id": str(sending.pk), "error": str(exc)})
        return False
    return True


def _adapter_or_none(channel: Channel) -> Any:
    try:
        return get_adapter(channel.type)
    except KeyError:
        return None
