"""The one seam through which conversations send anything to a contact, whatever the channel.

WhatsApp/Messenger go through the channels area's ``channels_app.services.send_reply`` (credentials,
splitting at platform limits, retries, disabling on bad tokens) when it is installed, else straight
through the adapter. Adapters with richer UIs (web chat) get the sources with the message
(``send_message``), streamed text (``stream_text``) and notices (``send_notice``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable
from typing import Any

from channels_app.adapters.base import NoticeAdapter, SendError, SendResult, StreamingAdapter, get_adapter
from channels_app.models import Channel
from tenants.secrets import with_channel_secret

logger = logging.getLogger(__name__)


def _registered(platform: str) -> Any:
    """The platform's adapter; an adapter module that registers itself on import is imported first."""
    try:
        return get_adapter(platform)
    except KeyError:
        try:
            importlib.import_module(f"channels_app.adapters.{platform}")
        except ImportError:
            raise KeyError(platform) from None
        return get_adapter(platform)


def _adapter(channel: Channel) -> Any:
    try:
        return _registered(channel.type)
    except KeyError:
        raise SendError(f"no channel adapter is installed for '{channel.type}'", permanent=True) from None


def _credentials_call(channel: Channel, fn: Any) -> Any:
    """Run ``fn(credentials)``; channels without stored credentials (web chat) get {}."""
    holder: dict[str, Any] = {}

    def wrapped(credentials: dict[str, str]) -> bool:
        holder["result"] = fn(dict(credentials))
        return True

    if with_channel_secret(channel=channel, fn=wrapped, missing_ok=True) is None:
        return fn({})
    return holder["result"]


def _accepts(method: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def can_stream(channel: Channel) -> bool:
    try:
        adapter = _registered(channel.type)
    except KeyError:
        return False
    return isinstance(adapter, StreamingAdapter)


def _check_enabled(channel: Channel) -> None:
    if channel.sending_disabled_reason:
        raise SendError(f"sending is disabled for this channel: {channel.sending_disabled_reason}", permanent=True)


def send_text(
    *,
    channel: Channel,
    recipient_id: str,
    text: str,
    sources: list[dict[str, Any]] | None = None,
    reply_to_message_id: str = "",
    message_id: int | None = None,
    role: str = "assistant",
) -> SendResult:
    """Send a text (with its sources where the channel can show them). Raises SendError.

    ``role`` (assistant | agent) reaches adapters whose UI shows who wrote (web chat)."""
    _check_enabled(channel)
    adapter = _adapter(channel)
    if hasattr(adapter, "send_message"):
        extra = {"role": role} if _accepts(adapter.send_message, "role") else {}
        return _credentials_call(
            channel,
            lambda creds: adapter.send_message(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                text=text,
                sources=sources or [],
                message_id=message_id,
                credentials=creds,
                **extra,
            ),
        )
    channel_services: Any
    try:
        from channels_app import services as channel_services
    except ImportError:
        channel_services = None
    if channel_services is not None and hasattr(channel_services, "send_reply"):
        return channel_services.send_reply(
            channel=channel, recipient_id=recipient_id, text=text, reply_to_message_id=reply_to_message_id
        )
    return _credentials_call(
        channel,
        lambda creds: adapter.send_text(
            channel_external_id=channel.external_id, recipient_id=recipient_id, text=text, credentials=creds
        ),
    )


def stream_text(
    *,
    channel: Channel,
    recipient_id: str,
    chunks: Iterable[str],
    sources: list[dict[str, Any]] | None = None,
    message_id: int | None = None,
) -> SendResult:
    _check_enabled(channel)
    adapter = _adapter(channel)
    kwargs: dict[str, Any] = {}
    if _accepts(adapter.stream_text, "message_id"):
        kwargs["message_id"] = message_id
    return _credentials_call(
        channel,
        lambda creds: adapter.stream_text(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            chunks=chunks,
            credentials=creds,
            **kwargs,
        ),
    )


def send_notice(*, channel: Channel, recipient_id: str, kind: str, data: dict[str, Any]) -> None:
    """Best effort: a notice the channel's own UI can show (web chat). Other channels: nothing."""
    try:
        adapter = _registered(channel.type)
    except KeyError:
        return
    if not isinstance(adapter, NoticeAdapter):
        return
    try:
        _credentials_call(
            channel,
            lambda creds: adapter.send_notice(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                kind=kind,
                data=data,
                credentials=creds,
            ),
        )
    except Exception as exc:
        logger.warning("notice not delivered", extra={"channel_id": str(channel.pk), "kind": kind, "error": str(exc)})


def send_typing(*, channel: Channel, recipient_id: str, reply_to_message_id: str) -> None:
    """Best effort typing indicator before a reply: a failure here must not cost the reply."""
    if channel.sending_disabled_reason:
        return
    try:
        adapter = _registered(channel.type)
        if isinstance(adapter, NoticeAdapter) and channel.type == Channel.Type.WEBCHAT:
            send_notice(channel=channel, recipient_id=recipient_id, kind="typing", data={"on": True})
            return
        channel_services: Any
        try:
            from channels_app import services as channel_services
        except ImportError:
            channel_services = None
        if channel_services is not None and hasattr(channel_services, "send_typing"):
            channel_services.send_typing(
                channel=channel, recipient_id=recipient_id, reply_to_message_id=reply_to_message_id
            )
            return
        if hasattr(adapter, "send_typing"):
            _credentials_call(
                channel,
                lambda creds: adapter.send_typing(
                    channel_external_id=channel.external_id,
                    recipient_id=recipient_id,
                    reply_to_message_id=reply_to_message_id,
                    credentials=creds,
                ),
            )
    except Exception as exc:
        logger.warning("typing indicator not delivered", extra={"channel_id": str(channel.pk), "error": str(exc)})
