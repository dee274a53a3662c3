"""Web chat adapter: the browser widget talks to us over a WebSocket (channels_app.consumers).

Inbound, the consumer hands each client frame to ``parse``; outbound, the pipeline calls
``send_text`` / ``stream_text`` / ``send_typing`` / ``send_notice`` / ``send_media`` / ``send_choices``
like for any channel, and we push the event to the channel-layer group of the visitor. Every server process holding a socket of that
visitor (several tabs, several daphne processes) is subscribed to the group, so a reply produced in
a Celery worker reaches the visitor wherever it is connected. A visitor who is not connected misses
nothing: the pipeline stored the reply, and the next session returns it in the history.

Like every adapter this does no database work: all it needs is the widget key (the channel's
``external_id``) and the visitor id (the contact's external id). The one exception is
``upload_media``: web chat has no platform to upload a file to, so the file is kept in the tenant's
own storage (channels_app.webchat_media, which finds the tenant by the widget key) and the visitor
fetches it through a URL signed for that visitor (``/api/webchat/media/<ref>/``).
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from channels_app.adapters.base import (
    Choices,
    InvalidMedia,
    InvalidPayload,
    Media,
    NormalizedMessage,
    OutboundMedia,
    ParsedPayload,
    SendError,
    SendResult,
    check_choice_limits,
    keep_storable,
)
from config import channel_layer

PLATFORM = "webchat"
# The consumer's handler for every event pushed to a visitor group ("webchat.event" -> webchat_event).
GROUP_EVENT_TYPE = "webchat.event"
SEND_TIMEOUT_SECONDS = 10.0


def visitor_group(*, channel_external_id: str, visitor_id: str) -> str:
    """Channel-layer group of one visitor of one widget.

    Widget keys are unique across tenants, so the group never mixes tenants. Hashed because group
    names are limited to 100 ASCII characters and must not reveal the visitor id in Redis keys.
    """
    digest = hashlib.sha256(f"{channel_external_id}\x00{visitor_id}".encode()).hexdigest()[:40]
    return f"webchat.{digest}"


def wire_message_id(message_id: int | str | None) -> str:
    """The id the widget knows a reply by: "m<pk>" for a stored Message (the same id the history gives
    it, so a reply seen live is not shown twice after a reconnect), else a fresh one."""
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        return f"m{message_id}"
    if isinstance(message_id, str) and message_id:
        return message_id
    return "wc_" + uuid.uuid4().hex


def now_iso() -> str:
    """When a frame is pushed, for the time the widget shows beside the message (as history's created_at)."""
    return datetime.now(UTC).isoformat()


# What the widget shows: images inline, audio and video with players, anything else as a download.
MEDIA_KINDS = ("image", "audio", "video", "document")
MAX_CHOICES = 10
MAX_CHOICE_TITLE = 100
MAX_CHOICE_ID = 200


def clean_sources(sources: Iterable[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Keep only what the widget shows: title, url, page (the widget renders text, never HTML)."""
    cleaned: list[dict[str, Any]] = []
    for source in sources or []:
        if not isinstance(source, dict):
            continue
        item: dict[str, Any] = {"title": str(source.get("title") or source.get("document_title") or "")[:300]}
        url = str(source.get("url") or "")
        item["url"] = url if url.startswith(("https://", "http://", "/")) else ""
        page = source.get("page")
        item["page"] = page if isinstance(page, int) and not isinstance(page, bool) else None
        if item["title"] or item["url"]:
            cleaned.append(item)
    return cleaned


class WebchatAdapter:
    platform = PLATFORM
    max_text_length = 20000
    needs_credentials = False  # the widget key is public; visitors are authenticated by their JWT
    graph_platform = False
    external_id_label = "widget key"

    # --- inbound -----------------------------------------------------------------------------------

    def verify_signature(self, *, body: bytes, headers: dict[str, str], credentials: dict[str, str]) -> bool:
        # Web chat has no webhook; its frames are authenticated by the session token at connect.
        return False

    def routing_ids(self, payload: dict[str, Any]) -> list[str]:
        return [payload["channel_external_id"]] if payload.get("channel_external_id") else []

    def parse(self, payload: dict[str, Any]) -> ParsedPayload:
        """One client frame, already authenticated by the consumer, into a NormalizedMessage.

        ``payload``: channel_external_id (widget key), visitor_id, client_message_id, text and
        optionally timestamp and page_url. The client message id is the dedupe key, so a message
        resent after a reconnect is stored once.
        """
        names = ("channel_external_id", "client_message_id", "visitor_id", "text")
        fields: dict[str, str] = {
            name: value for name in names if isinstance(value := payload.get(name), str) and value
        }
        wrong = sorted(set(names) - set(fields))
        if wrong:
            raise InvalidPayload(f"web chat frame without {', '.join(wrong)} as non-empty text")
        timestamp = payload.get("timestamp")
        if timestamp is None:
            timestamp = time.time()
        elif isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
            raise InvalidPayload("web chat frame timestamp is not a finite number of seconds")
        message = NormalizedMessage(
            platform=PLATFORM,
            channel_external_id=fields["channel_external_id"],
            message_id=fields["client_message_id"],
            sender_id=fields["visitor_id"],
            timestamp=float(timestamp),
            type="text",
            text=fields["text"],
            raw={k: payload[k] for k in ("client_message_id", "page_url") if payload.get(k)},
        )
        reply = payload.get("reply")
        if reply is not None:
            # A tapped option, shaped as WhatsApp's button_reply is normalized: the option's id as
            # ``reply.id`` and ``reply.payload``, its title as the text; the choices message it answers
            # as the context (the consumer has checked the option was offered to this visitor).
            if not isinstance(reply, dict) or not isinstance(reply.get("id"), str) or not reply["id"]:
                raise InvalidPayload("web chat reply without an option id")
            message.type = "interactive"
            message.reply = {"id": reply["id"], "payload": reply["id"], "title": fields["text"]}
            message.context_message_id = str(reply.get("message_id") or "")
        return keep_storable(ParsedPayload(messages=[message]))

    # --- outbound ----------------------------------------------------------------------------------

    def send_text(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        text: str,
        credentials: dict[str, str],
        reply_to_message_id: str = "",
        sources: Iterable[dict[str, Any]] | None = None,
        role: str = "assistant",
        message_id: int | str | None = None,
    ) -> SendResult:
        """Push one whole message (``reply_to_message_id`` is not shown in the widget). ``sources`` ({title, url, page}), ``role`` ("assistant" or "agent")
        and ``message_id`` (our Message pk) are web chat extras; other adapters do not take them."""
        wire_id = wire_message_id(message_id)
        self._push(
            channel_external_id,
            recipient_id,
            [
                {
                    "type": "message",
                    "id": wire_id,
                    "role": role,
                    "text": text,
                    "sources": clean_sources(sources),
                    "created_at": now_iso(),
                }
            ],
        )
        return SendResult(platform_message_ids=[wire_id])

    def send_message(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        text: str,
        sources: Iterable[dict[str, Any]] | None,
        message_id: int | str | None,
        credentials: dict[str, str],
        role: str = "assistant",
    ) -> SendResult:
        """The rich send conversations.outbound prefers when an adapter has it: text with its sources."""
        return self.send_text(
            channel_external_id=channel_external_id,
            recipient_id=recipient_id,
            text=text,
            credentials=credentials,
            sources=sources,
            role=role,
            message_id=message_id,
        )

    def stream_text(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        chunks: Iterable[str],
        credentials: dict[str, str],
        sources: Iterable[dict[str, Any]] | None = None,
        role: str = "assistant",
        message_id: int | str | None = None,
    ) -> SendResult:
        """Push a reply token by token as ``chunks`` yields them: stream_start, stream_delta..., stream_end
        (which carries the full text and the sources, so a client that missed a delta still ends right)."""
        wire_id = wire_message_id(message_id)
        group = visitor_group(channel_external_id=channel_external_id, visitor_id=recipient_id)
        self._stream(group, wire_id, role, chunks, clean_sources(sources))
        return SendResult(platform_message_ids=[wire_id])

    def send_typing(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        reply_to_message_id: str,
        credentials: dict[str, str],
    ) -> None:
        self._push(channel_external_id, recipient_id, [{"type": "typing", "on": True}])

    def send_notice(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        kind: str,
        data: dict[str, Any],
        credentials: dict[str, str],
    ) -> None:
        """Non-message notices: ``typing`` ({"on"|"typing": bool}), ``handoff`` ({"state", "message"}),
        ``sources`` ({"message_id", "sources"}: the sources of a message already streamed), or any other
        kind passed through as ``{"type": kind, **data}``."""
        if kind == "typing":
            event: dict[str, Any] = {"type": "typing", "on": bool(data.get("on", data.get("typing", True)))}
        elif kind == "handoff":
            event = {"type": "handoff", "state": str(data.get("state", "")), "message": str(data.get("message", ""))}
        elif kind == "sources":
            event = {
                "type": "sources",
                "id": wire_message_id(data.get("message_id")),
                "sources": clean_sources(data.get("sources")),
            }
        else:
            event = {**data, "type": kind}
        self._push(channel_external_id, recipient_id, [event])

    def fetch_media(self, *, media: Media, channel_external_id: str, credentials: dict[str, str]) -> tuple[bytes, str]:
        raise SendError("web chat messages carry no media", permanent=True)

    # --- files (MediaSendAdapter) ------------------------------------------------------------------

    def check_media(self, media: OutboundMedia) -> None:
        from django.conf import settings

        if media.kind not in MEDIA_KINDS:
            raise InvalidMedia(f"web chat shows {', '.join(MEDIA_KINDS)}, not '{media.kind}'")
        if not (media.link or media.media_id or media.content):
            raise InvalidMedia("give the file, a stored file or an https link")
        if media.link and not media.link.startswith("https://"):
            raise InvalidMedia("a media link must be an https:// URL")
        limit = int(settings.CHANNEL_MEDIA_SEND_MAX_BYTES)
        if media.content is not None and len(media.content) > limit:
            raise InvalidMedia(f"a web chat file is at most {limit // (1024 * 1024)} MB")

    def upload_media(self, *, channel_external_id: str, media: OutboundMedia, credentials: dict[str, str]) -> str:
        """Keep the file in the tenant's storage; its storage path is the "media id" ``send_media`` signs."""
        from channels_app import webchat_media

        return webchat_media.store_outbound_file(widget_key=channel_external_id, media=media)

    def send_media(
        self, *, channel_external_id: str, recipient_id: str, media: OutboundMedia, credentials: dict[str, str]
    ) -> SendResult:
        """A ``message`` frame whose ``media`` item carries a URL only this visitor can open (a stored
        file), or the https link as given; the caption is the message's text."""
        from channels_app import webchat_media

        self.check_media(media)
        if media.content is not None and not media.media_id:
            media.media_id = self.upload_media(
                channel_external_id=channel_external_id, media=media, credentials=credentials
            )
        described = {
            "kind": media.kind,
            "mime_type": media.mime_type,
            "filename": media.filename,
            "caption": media.caption,
            "link": "" if media.media_id else media.link,
            "storage_path": media.media_id,
            "size": len(media.content) if media.content is not None else None,
        }
        item = webchat_media.media_item(widget_key=channel_external_id, visitor_id=recipient_id, described=described)
        wire_id = wire_message_id(None)
        role = "agent" if media.from_agent else "assistant"
        frame = {"type": "message", "id": wire_id, "role": role, "text": media.caption, "sources": []}
        self._push(channel_external_id, recipient_id, [{**frame, "media": [item], "created_at": now_iso()}])
        return SendResult(platform_message_ids=[wire_id])

    # --- options to tap (InteractiveAdapter) -------------------------------------------------------

    def check_choices(self, choices: Choices) -> None:
        check_choice_limits(
            choices, most=MAX_CHOICES, title_chars=MAX_CHOICE_TITLE, id_chars=MAX_CHOICE_ID,
            text_chars=self.max_text_length,
        )  # fmt: skip

    def send_choices(
        self, *, channel_external_id: str, recipient_id: str, choices: Choices, credentials: dict[str, str]
    ) -> SendResult:
        """A ``message`` frame with ``choices``: each option's id is signed for this visitor (``token``),
        so a tap can only answer with an option that was offered (channels_app.webchat.receive_choice)."""
        from channels_app import webchat_media

        self.check_choices(choices)
        wire_id = wire_message_id(None)
        offered = webchat_media.choices_item(
            widget_key=channel_external_id, visitor_id=recipient_id, message_id=wire_id, choices=asdict(choices)
        )
        role = "agent" if choices.from_agent else "assistant"
        frame = {"type": "message", "id": wire_id, "role": role, "text": choices.body, "sources": []}
        self._push(channel_external_id, recipient_id, [{**frame, "choices": offered, "created_at": now_iso()}])
        return SendResult(platform_message_ids=[wire_id])

    # --- channel layer -----------------------------------------------------------------------------

    def _push(self, channel_external_id: str, recipient_id: str, events: list[dict[str, Any]]) -> None:
        group = visitor_group(channel_external_id=channel_external_id, visitor_id=recipient_id)
        for event in events:
            _group_send(group, event)

    def _stream(
        self, group: str, message_id: str, role: str, chunks: Iterable[str], sources: list[dict[str, Any]]
    ) -> None:
        started = now_iso()
        _group_send(group, {"type": "stream_start", "id": message_id, "role": role, "created_at": started})
        parts: list[str] = []
        # The chunks come from the caller's (blocking) LLM stream: each is pushed as soon as it arrives.
        for chunk in chunks:
            if not chunk:
                continue
            parts.append(chunk)
            _group_send(group, {"type": "stream_delta", "id": message_id, "delta": chunk})
        _group_send(
            group,
            {
                "type": "stream_end",
                "id": message_id,
                "role": role,
                "text": "".join(parts),
                "sources": sources,
                "created_at": started,
            },
        )


def _group_send(group: str, event: dict[str, Any]) -> None:
    try:
        sent = channel_layer.group_send(group, _wrap(event), timeout=SEND_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise SendError("the web chat channel layer did not answer in time", code="channel_layer") from exc
    except Exception as exc:
        if _is_layer_error(exc):  # Redis down: transient, the pipeline retries the send
            raise SendError(f"could not reach the web chat channel layer: {exc}", code="channel_layer") from exc
        raise
    if not sent:
        raise SendError("no channel layer is configured (CHANNEL_LAYERS)", permanent=True)


def _wrap(event: dict[str, Any]) -> dict[str, Any]:
    return {"type": GROUP_EVENT_TYPE, "event": event}


def _is_layer_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.RedisError | ConnectionError | OSError)
