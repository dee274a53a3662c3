"""Inbound media: fetch a stored message's attachments (and a Messenger sender's name) before the turn."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from channels_app import inbound, transcription
from channels_app.adapters.base import Media, NormalizedMessage, ProfileAdapter, SendError, get_adapter
from channels_app.models import Channel, InboundEvent
from channels_app.services.sending import call_adapter

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def media_storage_path(*, tenant_id: UUID, channel_id: UUID, message_id: str, index: int, mime_type: str) -> str:
    ext = mimetypes.guess_extension((mime_type or "").split(";")[0].strip()) or ".bin"
    stem = _UNSAFE.sub("_", message_id)[-80:] or "media"
    return f"{tenant_id}/media/{channel_id}/{stem}-{index}{ext}"


def prepare_inbound_message(*, inbound_id: int, final_attempt: bool = False) -> bool:
    """Fetch every attachment of a stored inbound message into the tenant's storage (and a Messenger
    sender's profile name), then hand the message to the turn pipeline. Transient failures raise
    SendError (the task retries); permanent ones (or the last attempt) are recorded on the message
    (``raw._media_errors``) and the turn goes ahead without the file.

    Returns True when the message was handed on."""
    row = InboundEvent.objects.select_related("channel").filter(pk=inbound_id, kind=InboundEvent.Kind.MESSAGE).first()
    if row is None or row.status != InboundEvent.Status.PENDING:
        return False
    channel = row.channel
    message = NormalizedMessage.from_dict(row.normalized)
    adapter = get_adapter(channel.type)
    errors: list[dict[str, Any]] = []
    for index, media in enumerate(message.media):
        if media.storage_path or not (media.media_id or media.url):
            continue
        try:
            content, mime_type = _fetch(channel, media)
        except SendError as exc:  # an invalid token has disabled the channel's sending (call_adapter)
            if not exc.disable_channel and not exc.permanent and not final_attempt:
                raise
            errors.append({"index": index, "code": exc.code, "error": str(exc)[:300]})
            continue
        media.mime_type = mime_type or media.mime_type
        media.size = len(content)
        media.storage_path = default_storage.save(
            media_storage_path(
                tenant_id=row.tenant_id,
                channel_id=channel.pk,
                message_id=message.message_id,
                index=index,
                mime_type=media.mime_type,
            ),
            ContentFile(content),
        )
        if media.kind == "audio" and media.voice and not message.text:
            _transcribe_voice(message, media, content, final_attempt=final_attempt)
    if not message.sender_name and isinstance(adapter, ProfileAdapter):
        message.sender_name = _profile_name(channel, message.sender_id)
    message.raw = {**message.raw, "_prepared": True}
    if errors:
        message.raw["_media_errors"] = errors
        logger.warning("inbound media not downloaded", extra={"inbound_id": row.pk, "errors": errors})
    with transaction.atomic():
        updated = (
            InboundEvent.objects.for_tenant(row.tenant_id)
            .filter(pk=row.pk, status=InboundEvent.Status.PENDING)
            .update(normalized=message.to_dict())
        )
        if updated:
            transaction.on_commit(lambda: inbound.enqueue([(row.pk, InboundEvent.Kind.MESSAGE, False)]), robust=True)
    return bool(updated)


def _transcribe_voice(message: NormalizedMessage, media: Media, content: bytes, *, final_attempt: bool) -> None:
    """A voice note's transcript becomes the message's text (what the pipeline answers and agents read,
    beside the audio), kept in ``raw._transcript``. Without a transcription endpoint the message is
    marked ``raw._voice_untranscribed`` so the pipeline can say it cannot understand voice notes yet.
    Transient endpoint failures raise (the task retries); after the last attempt, or a permanent
    failure, the error is kept in ``raw._transcript_error`` and the message goes on untranscribed."""
    if not transcription.configured():
        message.raw = {**message.raw, "_voice_untranscribed": True}
        return
    try:
        text = transcription.transcribe(content, mime_type=media.mime_type, filename=media.filename or "voice.ogg")
    except SendError as exc:
        if not exc.permanent and not final_attempt:
            raise
        message.raw = {**message.raw, "_voice_untranscribed": True, "_transcript_error": str(exc)[:300]}
        logger.warning("voice note not transcribed", extra={"message_id": message.message_id, "error": str(exc)})
        return
    message.text = text
    message.raw = {**message.raw, "_transcript": {"text": text, "model": settings.VOICE_TRANSCRIPTION_MODEL}}
    if not text:
        message.raw["_voice_untranscribed"] = True


def _profile_name(channel: Channel, user_id: str) -> str:
    """Best effort and cached: a missing name never holds up the reply."""
    key = f"channels:profile:{channel.pk}:{hashlib.sha256(user_id.encode()).hexdigest()[:32]}"
    try:
        cached = cache.get(key)
    except Exception:
        cached = None
    if cached is not None:
        return str(cached)
    try:
        profile = call_adapter(
            channel=channel,
            fn=lambda adapter, credentials: adapter.fetch_profile(user_id=user_id, credentials=credentials),
        )
    except SendError as exc:
        logger.info("sender profile not available", extra={"channel_id": str(channel.pk), "error": str(exc)})
        return ""
    name = " ".join(str(profile.get(k, "")).strip() for k in ("first_name", "last_name")).strip()
    try:
        cache.set(key, name, settings.MESSENGER_PROFILE_CACHE_SECONDS)
    except Exception:
        logger.warning("profile cache unavailable")
    return name


def _fetch(channel: Channel, media: Media) -> tuple[bytes, str]:
    content, mime_type = call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.fetch_media(
            media=media, channel_external_id=channel.external_id, credentials=credentials
        ),
    )
    if len(content) > settings.CHANNEL_MEDIA_MAX_BYTES:
        raise SendError(f"media of {len(content)} bytes is over the limit", code="too_large", permanent=True)
    return content, mime_type
