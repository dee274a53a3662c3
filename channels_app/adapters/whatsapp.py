"""WhatsApp Cloud API adapter: webhook payloads in, Graph API calls out. No database work here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings

from channels_app.adapters.base import (
    ACCOUNT_PREFIX,
    Choices,
    InvalidChoices,
    InvalidMedia,
    Media,
    NormalizedMessage,
    OutboundMedia,
    ParsedPayload,
    SendResult,
    ServiceWindow,
    StatusUpdate,
    finite_float,
    keep_storable,
    storable,
)
from channels_app.adapters.meta import MetaSignatureVerifier, as_dict, dicts, split_text
from channels_app.graph import GraphClient

MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
# WhatsApp Business Account fields routed by the account (entry.id), not a phone number id.
ACCOUNT_FIELDS = frozenset({"message_template_status_update"})
# Media the Cloud API sends (Meta's "Supported media types"): mime types and the size limit of each kind.
MB = 1024 * 1024
OUTBOUND_MEDIA: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * MB),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * MB),
    "sticker": (frozenset({"image/webp"}), 500 * 1024),
    "document": (
        frozenset(
            {
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        100 * MB,
    ),
}
CAPTION_KINDS = ("image", "video", "document")
MAX_CAPTION = 1024
# What a template sync asks Meta for (Message Templates API), and how many templates per page.
TEMPLATE_FIELDS = "id,name,language,category,status,rejected_reason,parameter_format,components"
TEMPLATE_PAGE_SIZE = 100
TEMPLATE_SYNC_MAX_PAGES = 50


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


def addressed(recipient_id: str) -> dict[str, str]:
    """A phone number goes in ``to``; a contact known only by a business-scoped user id (BSUID, e.g.
    ``US.13491208655302741918``) in ``recipient`` (BSUID rollout, 2026; see docs/channels.md)."""
    return {"to": recipient_id} if recipient_id.isdigit() else {"recipient": recipient_id}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidChoices(message)


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
        for entry, change in self._changes(payload):
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            pnid = str(metadata.get("phone_number_id", "")) if isinstance(metadata, dict) else ""
            field = change.get("field")
            if not pnid and isinstance(field, str) and field in ACCOUNT_FIELDS and entry.get("id"):
                pnid = f"{ACCOUNT_PREFIX}{entry['id']}"
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
            if field == "message_template_status_update":
                parsed.account_updates.append(self._template_update(str(entry.get("id", "")), value))
                continue
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
    def _template_update(waba_id: str, value: dict[str, Any]) -> dict[str, Any]:
        """A ``message_template_status_update``: the template (name, language) and what happened to it."""
        return storable(
            {
                "kind": "template_status",
                "routing_id": f"{ACCOUNT_PREFIX}{waba_id}",
                "waba_id": waba_id,
                "template_id": str(value.get("message_template_id", "")),
                "name": str(value.get("message_template_name", "")),
                "language": str(value.get("message_template_language", "")),
                "event": str(value.get("event", "")),
                "reason": str(value.get("reason", "")),
            }
        )

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
                tapped = str(reply.get("id", ""))
                msg.reply = {"id": tapped, "payload": tapped, "title": str(reply.get("title", ""))}
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
                **addressed(recipient_id),
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

    def sender_identities(self, message: NormalizedMessage) -> list[str]:
        """``from`` (the phone number, absent for some username users) and ``from_user_id`` (the BSUID)."""
        raw = message.raw if isinstance(message.raw, dict) else {}
        ids = [str(raw.get(key) or "") for key in ("from", "from_user_id")]
        return [i for n, i in enumerate(ids) if i and i not in ids[:n]]

    def check_choices(self, choices: Choices) -> None:
        """Meta's limits: body 1024 (buttons) / 4096 (list) characters, 1-3 buttons of 20 characters, or
        1-10 rows of 24 (description 72), ids up to 256 (list rows 200), header and footer 60."""
        as_buttons = self._as_buttons(choices)
        options = choices.options
        if not options:
            raise InvalidChoices("at least one option is needed")
        if len({o.id for o in options}) != len(options) or any(not o.id.strip() for o in options):
            raise InvalidChoices("every option needs its own non-empty id")
        limits = (1024, 3, 20, 256) if as_buttons else (4096, 10, 24, 200)
        body_max, count_max, title_max, id_max = limits
        _check(bool(choices.body.strip()), "the body text is required")
        _check(len(choices.body) <= body_max, f"the body is over {body_max} characters")
        _check(len(options) <= count_max, f"at most {count_max} {'buttons' if as_buttons else 'rows'}")
        for option in options:
            _check(0 < len(option.title) <= title_max, f"option titles are 1-{title_max} characters: {option.title!r}")
            _check(len(option.id) <= id_max, f"option ids are at most {id_max} characters")
            _check(len(option.description) <= 72, "row descriptions are at most 72 characters")
            _check(not (as_buttons and option.description), "reply buttons have no description: use style list")
        _check(len(choices.header) <= 60 and len(choices.footer) <= 60, "header and footer are at most 60 characters")
        _check(len(choices.button_label) <= 20, "the list's button label is at most 20 characters")

    @staticmethod
    def _as_buttons(choices: Choices) -> bool:
        if choices.style in ("buttons", "list"):
            return choices.style == "buttons"
        return len(choices.options) <= 3 and not any(o.description for o in choices.options)

    def send_choices(
        self, *, channel_external_id: str, recipient_id: str, choices: Choices, credentials: dict[str, str]
    ) -> SendResult:
        """An interactive ``button`` message (reply buttons) or ``list`` message (one section of rows)."""
        self.check_choices(choices)
        interactive: dict[str, Any] = {"body": {"text": choices.body}}
        if self._as_buttons(choices):
            interactive["type"] = "button"
            buttons = [{"type": "reply", "reply": {"id": o.id, "title": o.title}} for o in choices.options]
            interactive["action"] = {"buttons": buttons}
        else:
            interactive["type"] = "list"
            rows = [
                {"id": o.id, "title": o.title, **({"description": o.description} if o.description else {})}
                for o in choices.options
            ]
            interactive["action"] = {"button": choices.button_label or "Choose", "sections": [{"rows": rows}]}
        if choices.header:
            interactive["header"] = {"type": "text", "text": choices.header}
        if choices.footer:
            interactive["footer"] = {"text": choices.footer}
        message = {"type": "interactive", "interactive": interactive}
        return self._send(channel_external_id, recipient_id, message, credentials=credentials)

    def check_media(self, media: OutboundMedia) -> None:
        if media.kind not in OUTBOUND_MEDIA:
            raise InvalidMedia(f"WhatsApp sends {', '.join(OUTBOUND_MEDIA)}, not '{media.kind}'")
        types, limit = OUTBOUND_MEDIA[media.kind]
        if not (media.link or media.media_id or media.content):
            raise InvalidMedia("give the file, an uploaded media id or an https link")
        if media.link and not media.link.startswith("https://"):
            raise InvalidMedia("a media link must be an https:// URL")
        if media.content is not None:
            mime = media.mime_type.split(";")[0].strip().lower()
            if mime not in types:
                raise InvalidMedia(f"WhatsApp takes {media.kind} as {', '.join(sorted(types))}, not '{mime or '?'}'")
            if len(media.content) > limit:
                raise InvalidMedia(
                    f"a WhatsApp {media.kind} is at most {limit // 1024} KB; this one is {len(media.content) // 1024} KB"
                )
        if media.caption and (media.kind not in CAPTION_KINDS or len(media.caption) > MAX_CAPTION):
            raise InvalidMedia(f"captions go with {', '.join(CAPTION_KINDS)}, up to {MAX_CAPTION} characters")

    def upload_media(self, *, channel_external_id: str, media: OutboundMedia, credentials: dict[str, str]) -> str:
        """``POST /{phone-number-id}/media`` (multipart: file, type, messaging_product): the media id."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        mime = media.mime_type.split(";")[0].strip().lower()
        answer = client.post_form(
            f"{channel_external_id}/media",
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (media.filename or f"{media.kind}.bin", media.content or b"", mime)},
        )
        return str(answer.get("id", ""))

    def send_media(
        self, *, channel_external_id: str, recipient_id: str, media: OutboundMedia, credentials: dict[str, str]
    ) -> SendResult:
        body: dict[str, Any] = {"id": media.media_id} if media.media_id else {"link": media.link}
        if media.caption and media.kind in CAPTION_KINDS:
            body["caption"] = media.caption
        if media.filename and media.kind == "document":
            body["filename"] = media.filename
        return self._send(
            channel_external_id, recipient_id, {"type": media.kind, media.kind: body}, credentials=credentials
        )

    def fetch_templates(self, *, account_id: str, credentials: dict[str, str]) -> list[dict[str, Any]]:
        """``GET /{waba-id}/message_templates``, following ``paging.cursors.after`` while Meta says
        there is a ``next`` page (bounded: TEMPLATE_SYNC_MAX_PAGES)."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        params: dict[str, Any] = {"fields": TEMPLATE_FIELDS, "limit": TEMPLATE_PAGE_SIZE}
        found: list[dict[str, Any]] = []
        for _page in range(TEMPLATE_SYNC_MAX_PAGES):
            answer = client.get(f"{account_id}/message_templates", params=params)
            found.extend(dicts(answer.get("data")))
            paging = as_dict(answer.get("paging"))
            after = as_dict(paging.get("cursors")).get("after")
            if not paging.get("next") or not after:
                break
            params = {**params, "after": str(after)}
        return found

    def send_template(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        name: str,
        language: str,
        components: list[dict[str, Any]],
        credentials: dict[str, str],
        callback_data: str = "",
    ) -> SendResult:
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if components:
            template["components"] = components
        message: dict[str, Any] = {"type": "template", "template": template}
        if callback_data:
            message["biz_opaque_callback_data"] = callback_data[:512]
        return self._send(channel_external_id, recipient_id, message, credentials=credentials)

    def _send(
        self, channel_external_id: str, recipient_id: str, message: dict[str, Any], *, credentials: dict[str, str]
    ) -> SendResult:
        """One message of any type to ``POST /{phone-number-id}/messages``; its wamid back."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **addressed(recipient_id),
            **message,
        }
        answer = client.post(f"{channel_external_id}/messages", payload)
        messages = answer.get("messages") or [{}]
        return SendResult(platform_message_ids=[str(as_dict(messages[0]).get("id", ""))])

    def fetch_media(self, *, media: Media, channel_external_id: str, credentials: dict[str, str]) -> tuple[bytes, str]:
        """Look the media id up for a fresh URL, then download it with the bearer token."""
        client = GraphClient(access_token=credentials.get("access_token", ""))
        info = client.get(media.media_id, params={"phone_number_id": channel_external_id})
        url = str(info.get("url", "")) or media.url
        content, content_type = client.download(url)
        return content, str(info.get("mime_type") or content_type or media.mime_type)
