"""Files and options to tap on web chat, scoped to one visitor.

A file an agent or the bot sends is kept in the tenant's own storage (``<tenant>/media/<channel>/``).
The widget gets it at ``/api/webchat/media/<ref>/?key=<media key>``:

- ``ref`` is signed by us and names the widget, the visitor, the stored file and how to show it; it
  expires after ``MEDIA_URL_TTL_SECONDS`` (the history signs fresh ones at every session);
- ``key`` is the visitor's media key (given with the session; derived from channel and visitor), so
  a URL works only together with the credential of the visitor it was made for;
- the file must lie under the tenant's (and channel's) media folder.

A visitor of another widget, another tenant or another visitor of the same widget is refused, and
nothing but a file we signed can be named.

Options to tap carry a signed ``token`` per option (widget, visitor, choices message, option id and
title): a tap can only answer with an option that was offered to that visitor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import posixpath
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.core import signing

from channels_app.adapters.base import OutboundMedia

MEDIA_URL_PREFIX = "/api/webchat/media/"
MEDIA_URL_TTL_SECONDS = 7 * 24 * 3600
_MEDIA_SALT = "metachat.webchat.media.v1"
_CHOICE_SALT = "metachat.webchat.choice.v1"
# Shown inline (img / audio / video) with their own type; anything else is a download.
_INLINE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_INLINE_FAMILIES = ("audio/", "video/")


def _secret(purpose: bytes) -> bytes:
    from channels_app.webchat import _jwt_key

    return hmac.new(_jwt_key(), purpose, hashlib.sha256).digest()


def _signing_key(purpose: bytes) -> str:
    return base64.urlsafe_b64encode(_secret(purpose)).decode()


def media_key(*, channel_id: UUID, visitor_id: str) -> str:
    """The visitor's credential for its files (given with the session); it resumes nothing."""
    mac = hmac.new(_secret(b"metachat.webchat.media-key.v1"), f"{channel_id}:{visitor_id}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def media_key_matches(*, channel_id: UUID, visitor_id: str, key: str) -> bool:
    return bool(key) and hmac.compare_digest(key, media_key(channel_id=channel_id, visitor_id=visitor_id))


# --- storing ------------------------------------------------------------------------------------------


def store_outbound_file(*, widget_key: str, media: OutboundMedia) -> str:
    """Keep ``media.content`` in the widget's tenant's storage; its storage path. The same content is
    kept once (named by its hash)."""
    from channels_app.models import Channel

    found = Channel.objects.filter(type=Channel.Type.WEBCHAT, external_id=widget_key).values_list("tenant_id", "pk")
    row = found.first()
    if row is None:
        from channels_app.adapters.base import SendError

        raise SendError("no web chat channel has this widget key", permanent=True)
    tenant_id, channel_id = row
    from channels_app.services.outbound_media import store_outbound_content

    return store_outbound_content(tenant_id=tenant_id, channel_id=channel_id, media=media)


# --- URLs ---------------------------------------------------------------------------------------------


def media_item(*, widget_key: str, visitor_id: str, described: dict[str, Any]) -> dict[str, Any]:
    """What the widget shows for a file (a frame's or history item's ``media`` entry): kind, name, type,
    size, caption and a URL — ours, signed for this visitor, for a stored file; the https link as given
    otherwise ("" when there is neither)."""
    path = str(described.get("storage_path") or "")
    mime = str(described.get("mime_type") or (mimetypes.guess_type(path)[0] if path else "") or "")
    filename = str(described.get("filename") or (path.rsplit("/", 1)[-1] if path else ""))[:240]
    kind = str(described.get("kind") or "document")
    size = described.get("size")
    if path:
        ref = signing.dumps(
            {"w": widget_key, "v": visitor_id, "p": path, "m": mime, "n": filename},
            key=_signing_key(_MEDIA_SALT.encode()),
            salt=_MEDIA_SALT,
            compress=True,
        )
        url = f"{MEDIA_URL_PREFIX}{ref}/"
    else:
        link = str(described.get("link") or "")
        url = link if link.startswith("https://") else ""
    return {
        "kind": kind if kind in ("image", "audio", "video") else "document",
        "mime_type": mime,
        "filename": filename,
        "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
        "caption": str(described.get("caption") or ""),
        "url": url,
    }


@dataclass(frozen=True)
class ScopedFile:
    widget_key: str
    visitor_id: str
    storage_path: str
    mime_type: str
    filename: str

    @property
    def inline(self) -> bool:
        return self.mime_type in _INLINE_IMAGES or self.mime_type.startswith(_INLINE_FAMILIES)


def media_ref_open(ref: str) -> ScopedFile | None:
    """The file a ref names, if we signed it and it has not expired; else None."""
    try:
        data = signing.loads(
            ref,
            key=_signing_key(_MEDIA_SALT.encode()),
            salt=_MEDIA_SALT,
            max_age=MEDIA_URL_TTL_SECONDS,
        )
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("w", "v", "p", "m", "n")):
        return None
    return ScopedFile(
        widget_key=data["w"], visitor_id=data["v"], storage_path=data["p"], mime_type=data["m"], filename=data["n"]
    )


def path_belongs_to(path: str, *, tenant_id: UUID, channel_id: UUID) -> bool:
    """The path is a plain one under the tenant's media folder of this channel (no ``..``, no root)."""
    return posixpath.normpath(path) == path and path.startswith(f"{tenant_id}/media/{channel_id}/")


# --- options to tap -----------------------------------------------------------------------------------


def choices_item(*, widget_key: str, visitor_id: str, message_id: str, choices: dict[str, Any]) -> dict[str, Any]:
    """What the widget shows for options to tap (``Choices`` as a dict): header, footer and each
    option's title, description and signed ``token``."""
    options = []
    for option in choices.get("options") or []:
        if not isinstance(option, dict) or not option.get("id") or not option.get("title"):
            continue
        token = signing.dumps(
            {"w": widget_key, "v": visitor_id, "m": message_id, "i": str(option["id"]), "t": str(option["title"])},
            key=_signing_key(_CHOICE_SALT.encode()),
            salt=_CHOICE_SALT,
            compress=True,
        )
        options.append(
            {"title": str(option["title"]), "description": str(option.get("description") or ""), "token": token}
        )
    return {"header": str(choices.get("header") or ""), "footer": str(choices.get("footer") or ""), "options": options}


@dataclass(frozen=True)
class Tap:
    message_id: str  # the choices message's wire id
    option_id: str
    title: str


def choice_open(token: Any, *, widget_key: str, visitor_id: str) -> Tap | None:
    """The option a tap's token names, if we signed it for this widget's visitor; else None."""
    if not isinstance(token, str) or len(token) > 4000:
        return None
    try:
        data = signing.loads(token, key=_signing_key(_CHOICE_SALT.encode()), salt=_CHOICE_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("w") != widget_key or data.get("v") != visitor_id:
        return None
    if not all(isinstance(data.get(k), str) for k in ("m", "i", "t")):
        return None
    return Tap(message_id=data["m"], option_id=data["i"], title=data["t"])
