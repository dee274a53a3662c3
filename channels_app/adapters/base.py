"""The one contract every channel adapter implements, and the registry that maps a type to it.

Adapters translate between a platform and the platform-neutral shapes below. They do no database
work: the caller hands them the channel and its credentials, and stores what they return.
Adding SMS or Telegram means one new module and one line in ``ADAPTERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

# What channels_app.inbound stores must fit: InboundEvent.dedupe_key and sender_external_id are 255
# characters, and a status's dedupe key is "<message id>:<status>:<watermark>".
MAX_ID_CHARS = 200
MAX_STATUS_CHARS = 32


@dataclass
class Media:
    """An attachment. ``media_id``/``url`` point at the platform; ``storage_path`` is ours once fetched."""

    kind: str  # image | audio | video | document | sticker | file
    mime_type: str = ""
    media_id: str = ""
    url: str = ""
    sha256: str = ""
    caption: str = ""
    filename: str = ""
    storage_path: str = ""
    size: int | None = None
    voice: bool = False


@dataclass
class NormalizedMessage:
    """One inbound user message, whatever platform it came from."""

    platform: str  # whatsapp | messenger | webchat
    channel_external_id: str  # phone_number_id | page id | widget key
    message_id: str  # wamid | mid | client message id
    sender_id: str  # wa_id / BSUID | PSID | visitor id
    timestamp: float  # Unix seconds
    type: str  # text | image | audio | video | document | sticker | location | contacts
    #          # | interactive | button | reaction | postback | quick_reply | unsupported | ...
    text: str = ""  # what the user said, as text the pipeline can answer (caption, button title, ...)
    sender_name: str = ""
    media: list[Media] = field(default_factory=list)
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None  # interactive/button/quick reply/postback: {"id"/"payload", "title"}
    reaction: dict[str, Any] | None = None  # {"message_id", "emoji"}
    context_message_id: str = ""  # the message this one replies to
    unsupported_reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizedMessage:
        data = dict(data)
        data["media"] = [Media(**m) for m in data.get("media", [])]
        return cls(**data)


@dataclass
class StatusUpdate:
    """Delivery news about a message we sent."""

    platform: str
    channel_external_id: str
    message_id: str  # platform id of our outbound message (wamid / mid); "" for watermark statuses
    status: str  # sent | delivered | read | failed | played | ...
    timestamp: float
    recipient_id: str = ""
    watermark: float | None = None  # Messenger delivery/read: everything up to this time
    error: dict[str, Any] | None = None  # {"code", "title", "message", "details"}
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParsedPayload:
    messages: list[NormalizedMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # why parts were skipped (echo, other field, ...)
    # Business-account news (WhatsApp template status changes), routed as "account:<id>" (ACCOUNT_PREFIX).
    account_updates: list[dict[str, Any]] = field(default_factory=list)


# A routing id naming a business account rather than a phone number or page: the channels whose
# ``config.waba_id`` is that account receive it (channels_app.services.intake).
ACCOUNT_PREFIX = "account:"


class InvalidPayload(ValueError):
    """A payload an adapter cannot read at all (webhook payloads never raise it: their bad parts are
    skipped with a reason in ``ParsedPayload.ignored``)."""


def storable(value: Any) -> Any:
    """``value`` as PostgreSQL jsonb accepts it: no NUL in strings, no NaN or infinity (JSON payloads
    may carry both: ``"\\u0000"``, ``NaN``), so a hostile but signed webhook cannot make the insert fail."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(str(key)): storable(item) for key, item in value.items()}
    return value


def finite_float(value: Any, scale: float = 1.0) -> float:
    """A timestamp from a payload in seconds, 0.0 when it is no finite number."""
    try:
        number = float(value) / scale
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def keep_storable(parsed: ParsedPayload) -> ParsedPayload:
    """Make every item storable, and move those whose ids cannot be stored to ``ignored`` (with why)."""
    messages: list[NormalizedMessage] = []
    for message in parsed.messages:
        _clean_fields(message, skip={"media"})
        for media in message.media:
            _clean_fields(media)
        if len(message.message_id) > MAX_ID_CHARS or len(message.sender_id) > MAX_ID_CHARS:
            parsed.ignored.append(f"{message.type} message with an id over {MAX_ID_CHARS} characters")
        else:
            messages.append(message)
    statuses: list[StatusUpdate] = []
    for status in parsed.statuses:
        _clean_fields(status)
        if len(status.message_id) > MAX_ID_CHARS or len(status.recipient_id) > MAX_ID_CHARS:
            parsed.ignored.append(f"status update with an id over {MAX_ID_CHARS} characters")
        elif len(status.status) > MAX_STATUS_CHARS:
            parsed.ignored.append(f"status update with a status over {MAX_STATUS_CHARS} characters")
        else:
            statuses.append(status)
    parsed.messages, parsed.statuses = messages, statuses
    return parsed


def _clean_fields(item: Any, skip: frozenset[str] | set[str] = frozenset()) -> None:
    for name, value in vars(item).items():
        if name not in skip and not isinstance(value, bool | int):
            setattr(item, name, storable(value))


@dataclass
class SendResult:
    platform_message_ids: list[str]


class SendError(Exception):
    """Sending failed. ``permanent`` errors must not be retried; ``disable_channel`` stops all sends."""

    def __init__(
        self,
        message: str,
        *,
        code: int | str | None = None,
        permanent: bool = False,
        disable_channel: bool = False,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.disable_channel = disable_channel
        self.retry_after = retry_after
        self.details = details or {}


class ChannelAdapter(Protocol):
    platform: str
    max_text_length: int
    # False for channels that keep no credentials (web chat): their calls skip the secret lookup.
    needs_credentials: bool
    # A Meta Graph API platform: its external id is a Graph id that the tenant's access token must be
    # able to read (channel claims), it keeps CREDENTIAL_NAMES, and Meta posts to /webhooks/<platform>.
    graph_platform: bool
    # What the external id is called to a tenant ("phone_number_id", "page_id", "widget key").
    external_id_label: str

    def verify_signature(self, *, body: bytes, headers: dict[str, str], credentials: dict[str, str]) -> bool: ...

    def routing_ids(self, payload: dict[str, Any]) -> list[str]:
        """The channel external ids a payload is addressed to (to find channels and credentials)."""
        ...

    def parse(self, payload: dict[str, Any]) -> ParsedPayload: ...

    def send_text(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        text: str,
        credentials: dict[str, str],
        reply_to_message_id: str = "",
    ) -> SendResult: ...

    def fetch_media(self, *, media: Media, channel_external_id: str, credentials: dict[str, str]) -> tuple[bytes, str]:
        """Download an attachment: (content, mime type)."""
        ...


# --- optional abilities: an adapter declares one by implementing it; callers test with isinstance ---


@runtime_checkable
class TypingAdapter(Protocol):
    """Optional: show the contact that a reply is being written (and mark their message read)."""

    def send_typing(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        reply_to_message_id: str,
        credentials: dict[str, str],
    ) -> None: ...


@dataclass(frozen=True)
class ServiceWindow:
    """A platform's customer-service window: free-form messages only within ``hours`` of the contact's
    last message; beyond it, a human agent's reply may go with ``human_agent_tag`` for up to
    ``human_agent_hours`` (Messenger's HUMAN_AGENT: 7 days), everything else needs a template."""

    hours: float = 24.0
    human_agent_tag: str = ""
    human_agent_hours: float = 0.0


@runtime_checkable
class WindowedAdapter(Protocol):
    """Optional: a platform that refuses free-form messages outside a customer-service window."""

    service_window: ServiceWindow


@runtime_checkable
class MessageTagAdapter(Protocol):
    """Optional: send text with a message tag (Messenger ``MESSAGE_TAG``, e.g. ``HUMAN_AGENT``)."""

    def send_tagged_text(
        self, *, channel_external_id: str, recipient_id: str, text: str, tag: str, credentials: dict[str, str]
    ) -> SendResult: ...


@dataclass
class Choice:
    """One option the contact can tap; ``id`` comes back as the tap's ``reply.payload``."""

    id: str
    title: str
    description: str = ""


@dataclass
class Choices:
    """A message with options to tap: WhatsApp reply buttons (up to 3) or a list (up to 10 rows),
    Messenger quick replies (up to 13). ``style``: ``auto`` (buttons when they fit, else a list),
    ``buttons`` or ``list``; ``button_label`` opens a WhatsApp list."""

    body: str
    options: list[Choice]
    header: str = ""
    footer: str = ""
    button_label: str = ""
    style: str = "auto"
    from_agent: bool = False  # offered by a person (web chat shows it as the agent's), not the bot


class InvalidChoices(ValueError):
    """Choices a platform cannot show (too many, titles too long, ...), refused before sending."""


def check_choice_limits(
    choices: Choices,
    *,
    most: int,
    title_chars: int,
    id_chars: int,
    text_chars: int,
    noun: str = "option",
    nouns: str = "options",
) -> None:
    """Raise InvalidChoices at the first of a platform's limits these options break: their number, each
    title's and id's length (1 to the limit, blank not counted) and the text's."""
    options = choices.options
    problems = [
        (not options, f"at least one {noun} is needed"),
        (len(options) > most, f"at most {most} {nouns}"),
        (not choices.body.strip() or len(choices.body) > text_chars, f"the text is 1-{text_chars} characters"),
        (any(not 0 < len(o.title.strip()) <= title_chars for o in options), f"{noun} titles are 1-{title_chars} characters"),
        (any(not o.id.strip() or len(o.id) > id_chars for o in options), f"{noun} ids are 1-{id_chars} characters"),
    ]  # fmt: skip
    for failed, message in problems:
        if failed:
            raise InvalidChoices(message)


@runtime_checkable
class InteractiveAdapter(Protocol):
    """Optional: send options to tap; a tap comes back as a message with ``reply.payload``."""

    def check_choices(self, choices: Choices) -> None:
        """Raise InvalidChoices when the platform cannot show these (its documented limits)."""
        ...

    def send_choices(
        self, *, channel_external_id: str, recipient_id: str, choices: Choices, credentials: dict[str, str]
    ) -> SendResult: ...


@dataclass
class OutboundMedia:
    """A file to send: by ``link`` (an https URL the platform fetches), by a ``media_id`` already
    uploaded, or as ``content`` that is uploaded first. ``kind``: image | audio | video | document | sticker."""

    kind: str
    link: str = ""
    media_id: str = ""
    content: bytes | None = field(default=None, repr=False)
    mime_type: str = ""
    filename: str = ""
    caption: str = ""
    from_agent: bool = False  # sent by a person (web chat shows it as the agent's), not the bot


class InvalidMedia(ValueError):
    """A file the platform does not take (type, size, missing source), refused before sending."""


@runtime_checkable
class MediaSendAdapter(Protocol):
    """Optional: send images, documents, audio and video (uploaded to the platform or by link)."""

    def check_media(self, media: OutboundMedia) -> None:
        """Raise InvalidMedia when the platform refuses this kind, type or size (its documented limits)."""
        ...

    def upload_media(self, *, channel_external_id: str, media: OutboundMedia, credentials: dict[str, str]) -> str:
        """Upload ``media.content``; the platform's id for it."""
        ...

    def send_media(
        self, *, channel_external_id: str, recipient_id: str, media: OutboundMedia, credentials: dict[str, str]
    ) -> SendResult: ...


@runtime_checkable
class TemplateAdapter(Protocol):
    """Optional: pre-approved message templates (WhatsApp), the one way to write outside the window."""

    def fetch_templates(self, *, account_id: str, credentials: dict[str, str]) -> list[dict[str, Any]]:
        """Every template of the business account, as Meta describes it (all pages)."""
        ...

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
        """``callback_data`` comes back on the message's status webhooks (campaigns match by it)."""
        ...


@runtime_checkable
class ScopedIdentityAdapter(Protocol):
    """Optional: a platform that may name one user by several ids (WhatsApp: phone number and BSUID)."""

    def sender_identities(self, message: NormalizedMessage) -> list[str]:
        """Every id this message names its sender by, the phone number (when given) first."""
        ...


@runtime_checkable
class PreparedVerifierAdapter(Protocol):
    """Optional: a reusable signature check for one app secret (the webhook intake caches it)."""

    def signature_verifier(self, app_secret: str) -> Callable[[bytes, Mapping[str, str]], bool]: ...


@runtime_checkable
class ProfileAdapter(Protocol):
    """Optional: look a sender's name up when the webhook carries none (Messenger)."""

    def fetch_profile(self, *, user_id: str, credentials: dict[str, str]) -> dict[str, Any]: ...


@runtime_checkable
class RichMessageAdapter(Protocol):
    """Optional: adapters whose UI shows a message's sources and who wrote it (web chat)."""

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
    ) -> SendResult: ...


@runtime_checkable
class StreamingAdapter(Protocol):
    """Optional: adapters that can show a reply as it is generated (web chat) implement this too."""

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
    ) -> SendResult: ...


@runtime_checkable
class NoticeAdapter(Protocol):
    """Optional: adapters that can show non-message notices (typing, handoff) in their own UI."""

    def send_notice(
        self,
        *,
        channel_external_id: str,
        recipient_id: str,
        kind: str,
        data: dict[str, Any],
        credentials: dict[str, str],
    ) -> None: ...


def get_adapter(platform: str) -> ChannelAdapter:
    from channels_app.adapters import ADAPTERS

    try:
        return ADAPTERS[platform]
    except KeyError:
        raise KeyError(f"no channel adapter for '{platform}'") from None
