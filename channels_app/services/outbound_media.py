"""Media out: images, documents, audio and video to a contact, uploaded to the platform's media
endpoint first (WhatsApp ``/{phone-number-id}/media``, Messenger ``/{page-id}/message_attachments``)
or sent by an https link the platform fetches. Each adapter checks its platform's types and sizes
(InvalidMedia) before any call; files are free-form messages, so the customer-service window applies.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import replace
from typing import Any
from uuid import UUID

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from channels_app.adapters.base import InvalidMedia, MediaSendAdapter, OutboundMedia, SendResult, get_adapter
from channels_app.models import Channel
from channels_app.services import window
from channels_app.services.conversation_sends import conversation_send
from channels_app.services.sending import call_adapter, guard_sendable


def media_kind(mime_type: str) -> str:
    """The kind a file of this type is sent as: image, audio, video, else document."""
    family = (mime_type or "").split("/")[0].lower()
    return family if family in ("image", "audio", "video") else "document"


def _checked(channel: Channel, recipient_id: str, media: OutboundMedia) -> MediaSendAdapter:
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, MediaSendAdapter):
        raise InvalidMedia(f"{channel.type} channels cannot send files")
    adapter.check_media(media)
    if not channel.sending_disabled_reason:
        window.free_form_tag(channel=channel, recipient_id=recipient_id)  # raises OutsideWindow
    return adapter


def send_media(*, channel: Channel, recipient_id: str, media: OutboundMedia) -> SendResult:
    """Upload (when ``media.content`` is given) and send. Raises InvalidMedia or OutsideWindow before
    any Graph call, SendError from the platform."""
    guard_sendable(channel)
    _checked(channel, recipient_id, media)

    def run(adapter: Any, credentials: dict[str, str]) -> SendResult:
        if media.content is not None and not media.media_id:
            media.media_id = adapter.upload_media(
                channel_external_id=channel.external_id, media=media, credentials=credentials
            )
        return adapter.send_media(
            channel_external_id=channel.external_id, recipient_id=recipient_id, media=media, credentials=credentials
        )

    return call_adapter(channel=channel, fn=run)


def store_outbound_content(*, tenant_id: UUID, channel_id: UUID, media: OutboundMedia) -> str:
    """Keep ``media.content`` in the tenant's storage under the channel's media folder, named by its
    hash: the same file is kept once, whoever stores it (the transcript, web chat's upload)."""
    content = media.content or b""
    ext = mimetypes.guess_extension(media.mime_type.split(";")[0].strip().lower()) or ".bin"
    path = f"{tenant_id}/media/{channel_id}/out-{hashlib.sha256(content).hexdigest()[:40]}{ext}"
    if not default_storage.exists(path):
        path = default_storage.save(path, ContentFile(content))
    return path


def conversation_send_media(*, tenant: Any, conversation: Any, media: OutboundMedia, user: Any = None) -> Any:
    """An agent sends a file into a conversation: checked first (nothing stored when refused), the file
    kept in the tenant's storage for the transcript, then stored and sent as the agent's message (kind
    = the media kind, content = the caption)."""
    channel = conversation.channel
    recipient = conversation.contact.external_id
    media = replace(media, from_agent=True)
    _checked(channel, recipient, media)
    stored = ""
    if media.content is not None:
        stored = store_outbound_content(tenant_id=tenant.pk, channel_id=channel.pk, media=media)
    described = {
        "kind": media.kind,
        "mime_type": media.mime_type,
        "filename": media.filename,
        "caption": media.caption,
        "link": media.link,
        "storage_path": stored,
        "size": len(media.content) if media.content is not None else None,
    }
    return conversation_send(
        tenant=tenant,
        conversation=conversation,
        kind=media.kind,
        text=media.caption,
        payload={"media": described},
        user=user,
        send=lambda: send_media(channel=channel, recipient_id=recipient, media=media),
    )
