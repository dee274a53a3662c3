"""Messenger Platform adapter: page webhooks in, Send API calls out. No database work here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from django.conf import settings

from channels_app.adapters.base import (
    Choices,
    InvalidMedia,
    Media,
    NormalizedMessage,
    OutboundMedia,
    ParsedPayload,
    SendResult,
    ServiceWindow,
    StatusUpdate,
    check_choice_limits,
    finite_float,
    keep_storable,
)
from channels_app.adapters.meta import MetaSignatureVerifier, as_dict, dicts, split_text
from channels_app.graph import GraphClient

# Messenger attachment types -> our Media kinds ("file" stays "file": no caption, any mime type).
ATTACHMENT_KINDS = {"image": "image", "audio": "audio", "video": "video", "file": "file"}


# Outbound attachments: our kind -> Messenger's attachment type; 25 MB per file (Send API attachments).
OUTBOUND_ATTACHMENT_TYPES = {"image": "image", "audio": "audio", "video": "video", "document": "file"}
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024


class _EventBase(TypedDict):
    """The NormalizedMessage fields every message-like event of one webhook event shares."""

    platform: str
    channel_external_id: str
    sender_id: str
    timestamp: float


def _seconds(ms: Any) -> float:
    return finite_float(ms, scale=1000.0)


class MessengerAdapter:
    platform = "messenger"
    max_text_length = 2000
    needs_credentials = True
    graph_platform = True
    external_id_label = "page_id"
    # 24 h standard window; a human agent may answer for 7 days with the HUMAN_AGENT tag [S15].
    service_window = ServiceWindow(hours=24, human_agent_tag="HUMAN_AGENT", human_agent_hours=24 * 7)

    # --- inbound ---------------------------------------------------------------------------------

    def verify_signature(self, *, body: bytes, headers: dict[str, str], credentials: dict[str, str]) -> bool:
        app_secret = credentials.get("app_secret", "")
        if not app_secret:
            return False
        return MetaSignatureVerifier(app_secret).verify(
            body=body, headers=headers, accept_sha1=settings.MESSENGER_ACCEPT_SHA1_SIGNATURE
        )

    def signature_verifier(self, app_secret: str) -> Callable[[bytes, Mapping[str, str]], bool]:
        """A reusable check of this app secret's signatures (the webhook view caches it per channel)."""
        verifier = MetaSignatureVerifier(app_secret)
        accept_sha1 = settings.MESSENGER_ACCEPT_SHA1_SIGNATURE
        return lambda body, headers: verifier.verify(body=body, headers=headers, accept_sha1=accept_sha1)

    def routing_ids(self, payload: dict[str, Any]) -> list[str]:
        ids: list[str] = []
        for entry in self._entries(payload):
            page_id = str(entry.get("id", ""))
            if page_id and page_id not in ids:
                ids.append(page_id)
        return ids

    @staticmethod
    def _entries(payload: dict[str, Any]) -> list[dict[str, Any]]:
        return dicts(payload.get("entry") if isinstance(payload, dict) else None)

    def parse(self, payload: dict[str, Any]) -> ParsedPayload:
        parsed = ParsedPayload()
        if payload.get("object") != "page":
            parsed.ignored.append(f"object '{payload.get('object')}' is not page")
            return parsed
        for entry in self._entries(payload):
            page_id = str(entry.get("id", ""))
            if entry.get("standby"):
                parsed.ignored.append(f"standby events of page {page_id} (another app owns the thread)")
            for event in dicts(entry.get("messaging")):
                self._event(page_id, event, parsed)
        return keep_storable(parsed)

    def _event(self, page_id: str, ev: dict[str, Any], parsed: ParsedPayload) -> None:
        sender = str(as_dict(ev.get("sender")).get("id", ""))
        timestamp = _seconds(ev.get("timestamp"))
        base: _EventBase = {
            "platform": self.platform,
            "channel_external_id": page_id,
            "sender_id": sender,
            "timestamp": timestamp,
        }
        if isinstance(ev.get("message"), dict):
            message = ev["message"]
            if message.get("is_echo"):
                parsed.ignored.append(f"echo of our own message {message.get('mid', '')}")
                return
            parsed.messages.append(self._message(base, message, ev))
        elif isinstance(ev.get("postback"), dict):
            pb = ev["postback"]
            parsed.messages.append(
                NormalizedMessage(
                    **base,
                    message_id=str(pb.get("mid") or f"postback:{sender}:{ev.get('timestamp', '')}"),
                    type="postback",
                    text=str(pb.get("title", "")),
                    reply={"payload": str(pb.get("payload", "")), "title": str(pb.get("title", ""))},
                    raw=ev,
                )
            )
        elif isinstance(ev.get("reaction"), dict):
            r = ev["reaction"]
            action = str(r.get("action", "react"))
            parsed.messages.append(
                NormalizedMessage(
                    **base,
                    message_id=f"reaction:{r.get('mid', '')}:{sender}:{action}:{ev.get('timestamp', '')}",
                    type="reaction",
                    reaction={
                        "message_id": str(r.get("mid", "")),
                        "emoji": str(r.get("emoji") or "") if action == "react" else "",
                        "reaction": str(r.get("reaction", "")),
                        "action": action,
                    },
                    raw=ev,
                )
            )
        elif isinstance(ev.get("delivery"), dict):
            d = ev["delivery"]
            watermark = _seconds(d.get("watermark")) if d.get("watermark") is not None else None
            mids = d.get("mids")
            # Each status keeps the event without the mids list: with it, n mids stored n copies of
            # the list (a signed body of 100,000 mids would serialise to gigabytes).
            raw = {**ev, "delivery": {k: v for k, v in d.items() if k != "mids"}}
            for mid in mids if isinstance(mids, list) and mids else [""]:
                parsed.statuses.append(
                    StatusUpdate(
                        platform=self.platform,
                        channel_external_id=page_id,
                        message_id=str(mid),
                        status="delivered",
                        timestamp=timestamp,
                        recipient_id=sender,
                        watermark=watermark,
                        raw=raw,
                    )
                )
        elif isinstance(ev.get("read"), dict):
            parsed.statuses.append(
                StatusUpdate(
                    platform=self.platform,
                    channel_external_id=page_id,
                    message_id="",
                    status="read",
                    timestamp=timestamp,
                    recipient_id=sender,
                    watermark=_seconds(ev["read"].get("watermark")),
                    raw=ev,
                )
            )
        else:
            kinds = sorted(k for k in ev if k not in {"sender", "recipient", "timestamp"})
            parsed.ignored.append(f"messenger event {','.join(kinds) or 'empty'} from {sender or '?'}")

    def _message(self, base: _EventBase, message: dict[str, Any], ev: dict[str, Any]) -> NormalizedMessage:
        msg = NormalizedMessage(
            **base,
            message_id=str(message.get("mid", "")),
            type="text",
            text=str(message.get("text", "")),
            context_message_id=str(as_dict(message.get("reply_to")).get("mid", "")),
            raw=ev,
        )
        if isinstance(message.get("quick_reply"), dict):
            msg.type = "quick_reply"
            msg.reply = {"payload": str(message["quick_reply"].get("payload", "")), "title": msg.text}
            return msg
        attachments = dicts(message.get("attachments"))
        unsupported: list[str] = []
        for att in attachments:
            kind = str(att.get("type", ""))
            payload = as_dict(att.get("payload"))
            if kind in ATTACHMENT_KINDS:
                is_sticker = kind == "image" and (payload.get("sticker_id") or message.get("sticker_id"))
                msg.media.append(
                    Media(kind="sticker" if is_sticker else ATTACHMENT_KINDS[kind], url=str(payload.get("url", "")))
                )
            elif kind == "location" and isinstance(payload.get("coordinates"), dict):
                coords = payload["coordinates"]
                msg.location = {"latitude": coords.get("lat"), "longitude": coords.get("long")}
                if att.get("title"):
                    msg.location["name"] = str(att["title"])
            elif kind == "fallback":
                link = str(payload.get("url") or att.get("url") or "")
                title = str(att.get("title") or "")
                msg.text = msg.text or " ".join(x for x in (title, link) if x)
            else:
                unsupported.append(kind or "unknown")
        if msg.media:
            msg.type = msg.media[0].kind
        elif msg.location is not None:
            msg.type = "location"
            msg.text = msg.text or f"Location: {msg.location.get('latitude')}, {msg.location.get('longitude')}"
        if unsupported and not msg.media and msg.location is None and not msg.text:
            msg.type = "unsupported"
            msg.unsupported_reason = f"attachment type '{', '.join(unsupported)}' is not supported"
        elif not attachments and "text" not in message:
            msg.type = "unsupported"
            msg.unsupported_reason = "message without text or attachments"
        return msg

    # --- outbound ----------------------------------------------------------------------------------

    def send_text(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        text: str,
        credentials: dict[str, str],
        reply_to_message_id: str = "",
    ) -> SendResult:
        return self._texts(channel_external_id, recipient_id, text, credentials, {"messaging_type": "RESPONSE"})

    def _texts(
        self, channel_external_id: str, recipient_id: str, text: str, credentials: dict[str, str], how: dict[str, str]
    ) -> SendResult:
        """``text`` in parts of at most max_text_length, each sent as ``how`` says (messaging type, tag)."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        ids: list[str] = []
        for part in split_text(text, self.max_text_length):
            answer = client.post(
                f"{channel_external_id}/messages", {"recipient": {"id": recipient_id}, **how, "message": {"text": part}}
            )
            ids.append(str(answer.get("message_id", "")))
        return SendResult(platform_message_ids=ids)

    def check_choices(self, choices: Choices) -> None:
        """Quick replies: up to 13, titles up to 20 characters, payloads up to 1000, text up to 2000."""
        check_choice_limits(
            choices,
            most=13,
            title_chars=20,
            id_chars=1000,
            text_chars=self.max_text_length,
            noun="quick reply",
            nouns="quick replies",
        )

    def send_choices(
        self, *, channel_external_id: str, recipient_id: str, choices: Choices, credentials: dict[str, str]
    ) -> SendResult:
        """Text with ``quick_replies``; header and footer, which Messenger lacks, go around the text."""
        self.check_choices(choices)
        text = "\n\n".join(part for part in (choices.header, choices.body, choices.footer) if part)
        replies = [{"content_type": "text", "title": o.title, "payload": o.id} for o in choices.options]
        client = GraphClient(access_token=credentials.get("access_token", ""))
        answer = client.post(
            f"{channel_external_id}/messages",
            {
                "recipient": {"id": recipient_id},
                "messaging_type": "RESPONSE",
                "message": {"text": text[: self.max_text_length], "quick_replies": replies},
            },
        )
        return SendResult(platform_message_ids=[str(answer.get("message_id", ""))])

    def check_media(self, media: OutboundMedia) -> None:
        if media.kind not in OUTBOUND_ATTACHMENT_TYPES:
            raise InvalidMedia(f"Messenger sends {', '.join(OUTBOUND_ATTACHMENT_TYPES)}, not '{media.kind}'")
        if not (media.link or media.media_id or media.content):
            raise InvalidMedia("give the file, an uploaded attachment id or an https link")
        if media.link and not media.link.startswith("https://"):
            raise InvalidMedia("a media link must be an https:// URL")
        if media.content is not None and len(media.content) > MAX_ATTACHMENT_BYTES:
            raise InvalidMedia(f"a Messenger attachment is at most {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB")
        family = media.mime_type.split("/")[0].lower()
        if media.content is not None and media.kind != "document" and family != media.kind:
            raise InvalidMedia(f"a Messenger {media.kind} must have a {media.kind}/* type, not '{media.mime_type}'")

    def upload_media(self, *, channel_external_id: str, media: OutboundMedia, credentials: dict[str, str]) -> str:
        """``POST /{page-id}/message_attachments`` (Attachment Upload API): a reusable attachment id."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        kind = OUTBOUND_ATTACHMENT_TYPES[media.kind]
        message = {"attachment": {"type": kind, "payload": {"is_reusable": True}}}
        answer = client.post_form(
            f"{channel_external_id}/message_attachments",
            data={"message": json.dumps(message)},
            files={"filedata": (media.filename or f"{media.kind}.bin", media.content or b"", media.mime_type)},
        )
        return str(answer.get("attachment_id", ""))

    def send_media(
        self, *, channel_external_id: str, recipient_id: str, media: OutboundMedia, credentials: dict[str, str]
    ) -> SendResult:
        """The attachment by id or URL; a caption, which Messenger attachments lack, follows as text."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        payload = {"attachment_id": media.media_id} if media.media_id else {"url": media.link, "is_reusable": True}
        attachment = {"type": OUTBOUND_ATTACHMENT_TYPES[media.kind], "payload": payload}
        answer = client.post(
            f"{channel_external_id}/messages",
            {"recipient": {"id": recipient_id}, "messaging_type": "RESPONSE", "message": {"attachment": attachment}},
        )
        ids = [str(answer.get("message_id", ""))]
        if media.caption:
            caption = self.send_text(
                channel_external_id=channel_external_id,
                recipient_id=recipient_id,
                text=media.caption,
                credentials=credentials,
            )
            ids += caption.platform_message_ids
        return SendResult(platform_message_ids=ids)

    def send_tagged_text(
        self, *, channel_external_id: str, recipient_id: str, text: str, tag: str, credentials: dict[str, str]
    ) -> SendResult:
        """Text outside the standard window: ``messaging_type: MESSAGE_TAG`` with ``tag`` [S13][S15]."""
        how = {"messaging_type": "MESSAGE_TAG", "tag": tag}
        return self._texts(channel_external_id, recipient_id, text, credentials, how)

    def send_typing(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        reply_to_message_id: str,
        credentials: dict[str, str],
    ) -> None:
        """mark_seen then typing_on: two requests, a sender action is never combined with a message."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        for action in ("mark_seen", "typing_on"):
            client.post(f"{channel_external_id}/messages", {"recipient": {"id": recipient_id}, "sender_action": action})

    def fetch_media(self, *, media: Media, channel_external_id: str, credentials: dict[str, str]) -> tuple[bytes, str]:
        """Messenger attachment URLs are signed CDN links: fetched without the page token."""
        client = GraphClient(access_token="")
        content, content_type = client.download(media.url, with_token=False)
        return content, content_type or media.mime_type

    def fetch_profile(self, *, user_id: str, credentials: dict[str, str]) -> dict[str, Any]:
        """The user's public profile (first_name, last_name): Messenger webhooks carry no name."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        return client.get(user_id, params={"fields": "first_name,last_name"})
