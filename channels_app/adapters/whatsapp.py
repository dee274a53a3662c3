"""WhatsApp Cloud API adapter: webhook payloads in, Graph API calls out. No database work here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings

from channels_app.adapters.base import (
    Media,
    NormalizedMessage,
    ParsedPayload,
    SendResult,
    ServiceWindow,
    StatusUpdate,
    finite_float,
    keep_storable,
)
from channels_app.adapters.meta import MetaSignatureVerifier, as_dict, dicts, split_text
from channels_app.graph import GraphClient

MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")


def _first_error(errors: Any) -> dict[str, Any] | None:
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    error = errors[0]
    data = as_dict(error.get("error_data"))
    return {
        "code": error.get("code"),
        "title": str(error.get("title", "")),
        "message": str(error.get("message", "")),
        "details": str(data.get("details", "")),
    }


def _contact_text(contact: dict[str, Any]) -> str:
    name_parts = as_dict(contact.get("name"))
    name = str(name_parts.get("formatted_name") or name_parts.get("first_name", ""))
    phones = ", ".join(str(p["phone"]) for p in dicts(contact.get("phones")) if p.get("phone"))
    return f"{name} ({phones})" if phones else name


class WhatsAppAdapter:
    platform = "whatsapp"
    max_text_length = 4096
    needs_credentials = True
    graph_platform = True
    external_id_label = "phone_number_id"
    # 24 h since the user's last message; beyond it only templates (131047 otherwise) [S9].
    service_window = ServiceWindow(hours=24)

    # --- inbound ---------------------------------------------------------------------------------

    def verify_signature(self, *, body: bytes, headers: dict[str, str], credentials: dict[str, str]) -> bool:
        app_secret = credentials.get("app_secret", "")
        if not app_secret:
            return False
        return MetaSignatureVerifier(app_secret).verify(body=body, headers=headers)

    def signature_verifier(self, app_secret: str) -> Callable[[bytes, Mapping[str, str]], bool]:
        """A reusable check of this app secret's signatures (the webhook view caches it per channel)."""
        verifier = MetaSignatureVerifier(app_secret)
        return lambda body, headers: verifier.verify(body=body, headers=headers)

    def routing_ids(self, payload: dict[str, Any]) -> list[str]:
        ids: list[str] = []
        for _entry, change in self._changes(payload):
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            pnid = str(metadata.get("phone_number_id", "")) if isinstance(metadata, dict) else ""
            if pnid and pnid not in ids:
                ids.append(pnid)
        return ids

    def parse(self, payload: dict[str, Any]) -> ParsedPayload:
        parsed = ParsedPayload()
        if payload.get("object") != "whatsapp_business_account":
            parsed.ignored.append(f"object '{payload.get('object')}' is not whatsapp_business_account")
            return parsed
        for entry, change in self._changes(payload):
            field = change.get("field")
            raw_value = change.get("value")
            value: dict[str, Any] = raw_value if isinstance(raw_value, dict) else {}
            if field != "messages":
                parsed.ignored.append(f"field '{field}' of entry {entry.get('id', '?')}")
                continue
            pnid = str(as_dict(value.get("metadata")).get("phone_number_id", ""))
            names: dict[str, str] = {}
            for contact in dicts(value.get("contacts")):
                name = str(as_dict(contact.get("profile")).get("name", ""))
                for key in ("wa_id", "user_id"):
                    if contact.get(key):
                        names[str(contact[key])] = name
            for message in dicts(value.get("messages")):
                parsed.messages.append(self._message(pnid, message, names))
            for status in dicts(value.get("statuses")):
                parsed.statuses.append(self._status(pnid, status))
            if value.get("errors") and not value.get("messages") and not value.get("statuses"):
                parsed.ignored.append(f"errors without messages: {_first_error(value.get('errors'))}")
        return keep_storable(parsed)

    @staticmethod
    def _changes(payload: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        entries = payload.get("entry") if isinstance(payload, dict) else None
        for entry in dicts(entries):
            for change in dicts(entry.get("changes")):
                out.append((entry, change))
        return out

    def _message(self, pnid: str, m: dict[str, Any], names: dict[str, str]) -> NormalizedMessage:
        # BSUID rollout: "from" may be absent for username users; fall back to from_user_id.
        sender = str(m.get("from") or m.get("from_user_id") or "")
        kind = str(m.get("type") or "unsupported")
        msg = NormalizedMessage(
            platform=self.platform,
            channel_external_id=pnid,
            message_id=str(m.get("id", "")),
            sender_id=sender,
            timestamp=finite_float(m.get("timestamp")),
            type=kind,
            sender_name=names.get(sender) or names.get(str(m.get("from_user_id", ""))) or "",
            context_message_id=str(as_dict(m.get("context")).get("id", "")),
            raw=m,
        )
        body = as_dict(m.get(kind))
        if kind == "text":
            msg.text = str(body.get("body", ""))
        elif kind in MEDIA_KINDS:
            msg.media = [
                Media(
                    kind=kind,
                    mime_type=str(body.get("mime_type", "")),
                    media_id=str(body.get("id", "")),
                    url=str(body.get("url", "")),
                    sha256=str(body.get("sha256", "")),
                    caption=str(body.get("caption", "")),
                    filename=str(body.get("filename", "")),
                    voice=bool(body.get("voice", False)),
                )
            ]
            msg.text = str(body.get("caption", ""))
        elif kind == "location":
            msg.location = {
                k: body[k] for k in ("latitude", "longitude", "name", "address", "url") if body.get(k) is not None
            }
            label = ", ".join(str(body[k]) for k in ("name", "address") if body.get(k))
            coords = f"{body.get('latitude')}, {body.get('longitude')}"
            msg.text = f"Location: {label} ({coords})" if label else f"Location: {coords}"
        elif kind == "contacts":
            msg.contacts = dicts(m.get("contacts"))
            msg.text = "Shared contacts: " + "; ".join(_contact_text(c) for c in msg.contacts)
        elif kind == "interactive":
            sub = str(body.get("type", ""))
            reply = body.get(sub) if isinstance(body.get(sub), dict) else None
            if sub in ("button_reply", "list_reply") and reply:
                msg.reply = {"id": str(reply.get("id", "")), "title": str(reply.get("title", ""))}
                if reply.get("description"):
                    msg.reply["description"] = str(reply["description"])
                msg.text = msg.reply["title"]
            elif sub == "nfm_reply" and reply:
                msg.reply = {"id": "flow", "title": str(reply.get("body", "")), "response": reply.get("response_json")}
                msg.text = msg.reply["title"]
            else:
                msg.unsupported_reason = self._unsupported_reason(m, f"interactive reply '{sub or 'none'}'")
        elif kind == "button":
            msg.reply = {"payload": str(body.get("payload", "")), "title": str(body.get("text", ""))}
            msg.text = msg.reply["title"]
        elif kind == "reaction":
            # An empty or missing emoji means the user removed their reaction.
            msg.reaction = {"message_id": str(body.get("message_id", "")), "emoji": str(body.get("emoji") or "")}
        else:
            msg.unsupported_reason = self._unsupported_reason(m, f"message type '{kind}'")
        return msg

    @staticmethod
    def _unsupported_reason(m: dict[str, Any], what: str) -> str:
        error = _first_error(m.get("errors"))
        if error:
            return f"{what}: {error['code']} {error['title']}: {error['details']}".strip()
        return f"{what} is not supported"

    def _status(self, pnid: str, s: dict[str, Any]) -> StatusUpdate:
        return StatusUpdate(
            platform=self.platform,
            channel_external_id=pnid,
            message_id=str(s.get("id", "")),
            status=str(s.get("status", "")),
            timestamp=finite_float(s.get("timestamp")),
            recipient_id=str(s.get("recipient_id") or s.get("recipient_user_id") or ""),
            error=_first_error(s.get("errors")),
            raw=s,
        )

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
        client = GraphClient(access_token=credentials.get("access_token", ""))
        ids: list[str] = []
        for index, part in enumerate(split_text(text, self.max_text_length)):
            payload: dict[str, Any] = {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": recipient_id,
                "type": "text",
                "text": {"preview_url": False, "body": part},
            }
            if reply_to_message_id and index == 0:
                payload["context"] = {"message_id": reply_to_message_id}
            answer = client.post(f"{channel_external_id}/messages", payload)
            messages = answer.get("messages") or [{}]
            ids.append(str(messages[0].get("id", "")))
        return SendResult(platform_message_ids=ids)

    def send_typing(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        reply_to_message_id: str,
        credentials: dict[str, str],
    ) -> None:
        """Mark the user's message read and show the typing indicator (both need the inbound wamid)."""
        if not reply_to_message_id:
            return
        client = GraphClient(access_token=credentials.get("access_token", ""))
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": reply_to_message_id}
        if settings.WHATSAPP_TYPING_INDICATOR:
            payload["typing_indicator"] = {"type": "text"}
        client.post(f"{channel_external_id}/messages", payload)

    def fetch_media(self, *, media: Media, channel_external_id: str, credentials: dict[str, str]) -> tuple[bytes, str]:
        """Look the media id up for a fresh URL, then download it with the bearer token."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        info = client.get(media.media_id, params={"phone_number_id": channel_external_id})
        url = str(info.get("url", "")) or media.url
        content, content_type = client.download(url)
        return content, str(info.get("mime_type") or content_type or media.mime_type)
