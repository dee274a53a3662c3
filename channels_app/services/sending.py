"""Sending: the one way anything reaches a platform (``call_adapter``), text replies and typing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from channels_app.adapters.base import SendError, SendResult, TypingAdapter, get_adapter
from channels_app.models import Channel
from channels_app.secrets import with_channel_secret
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


def send_reply(*, channel: Channel, recipient_id: str, text: str, reply_to_message_id: str = "") -> SendResult:
    """Send a text reply through the channel's adapter (split at the platform limit).

    Raises SendError: ``permanent`` ones must not be retried (outside the window, bad token, ...);
    an invalid token disables the channel's sending first (``channel.disabled`` event)."""
    guard_sendable(channel)
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


def send_typing(*, channel: Channel, recipient_id: str, reply_to_message_id: str = "") -> bool:
    """Best effort "seen + typing" before a reply; never fails the turn (but a bad token disables)."""
    if channel.sending_disabled_reason or not isinstance(_adapter_or_none(channel), TypingAdapter):
        return False
    try:
        call_adapter(
            channel=channel,
            fn=lambda adapter, credentials: adapter.send_typing(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                reply_to_message_id=reply_to_message_id,
                credentials=credentials,
            ),
        )
    except SendError as exc:
        logger.warning("typing indicator not sent", extra={"channel_id": str(channel.pk), "error": str(exc)})
        return False
    return True


def _adapter_or_none(channel: Channel) -> Any:
    try:
        return get_adapter(channel.type)
    except KeyError:
        return None
