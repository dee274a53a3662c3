"""Web chat sessions: widget key + Origin -> a short-lived JWT; visitor messages in; the visitor's history.

A visitor is anonymous. Its id is made here (random, 128 bits) and given to the browser inside a signed
*visitor token* that the browser keeps; presenting it again resumes the same contact and conversation.
The signature binds the visitor to its channel, so a visitor token of one widget (or tenant) resumes
nothing on another: it just gets a new visitor.

The session JWT (HS256) names tenant, channel and visitor; the WebSocket consumer accepts a connection
only with a valid, unexpired token whose Origin is still allowed by the channel.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import jwt
import redis
from django.conf import settings

from channels_app import webchat_media
from channels_app.adapters.webchat import WebchatAdapter, clean_sources, wire_message_id
from channels_app.inbound import record_inbound
from channels_app.models import Channel, InboundEvent
from config import channel_layer, metrics
from config.redis_clients import redis_client
from tenants import ratelimit

logger = logging.getLogger(__name__)

TOKEN_ISSUER = "metachat"
TOKEN_AUDIENCE = "webchat"
_VISITOR_ID = re.compile(r"^v_[A-Za-z0-9_-]{16,64}$")
_CLIENT_MESSAGE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_adapter = WebchatAdapter()


class WebchatError(Exception):
    """A refusal the client is told about: ``code`` is stable, ``message`` is for humans."""

    def __init__(self, code: str, message: str, *, status: int = 400, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}


# --- keys ---------------------------------------------------------------------------------------------


def _jwt_key() -> bytes:
    explicit = settings.WEBCHAT_JWT_SECRET
    if explicit:
        return explicit.encode()
    # Derived, not SECRET_KEY itself: a web chat token can never be confused with a Django signature.
    return hmac.new(settings.SECRET_KEY.encode(), b"metachat.webchat.jwt.v1", hashlib.sha256).digest()


def _visitor_key() -> bytes:
    return hmac.new(_jwt_key(), b"metachat.webchat.visitor.v1", hashlib.sha256).digest()


def _visitor_signature(channel_id: UUID, visitor_id: str) -> str:
    mac = hmac.new(_visitor_key(), f"{channel_id}:{visitor_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def visitor_token_for(*, channel: Channel, visitor_id: str) -> str:
    return f"{visitor_id}.{_visitor_signature(channel.pk, visitor_id)}"


def visitor_from_token(*, channel: Channel, visitor_token: str) -> str | None:
    """The visitor id if the token was made by us for this channel, else None."""
    visitor_id, _, signature = (visitor_token or "").partition(".")
    if not _VISITOR_ID.match(visitor_id) or not signature:
        return None
    if not hmac.compare_digest(signature, _visitor_signature(channel.pk, visitor_id)):
        return None
    return visitor_id


def new_visitor_id() -> str:
    return "v_" + secrets.token_urlsafe(16)


# --- origins ------------------------------------------------------------------------------------------


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports dropped; "" when it is not an origin."""
    origin = (origin or "").strip()
    if origin == "*":
        return "*"
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    try:
        port = parts.port
    except ValueError:
        return ""
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def allowed_origins(channel: Channel) -> list[str]:
    return [o for o in (normalize_origin(x) for x in (channel.config or {}).get("allowed_origins", [])) if o]


def check_origin(*, channel: Channel, origin: str) -> None:
    """Refuse a missing Origin and any origin the channel does not list ("*" lists every origin)."""
    if not origin:
        raise WebchatError(
            "origin_required", "The request has no Origin header; open the chat from a web page.", status=403
        )
    allowed = allowed_origins(channel)
    if "*" in allowed or normalize_origin(origin) in allowed:
        return
    raise WebchatError(
        "origin_not_allowed",
        f"This chat widget is not enabled on {origin[:200]}; add the origin to the channel's allowed origins.",
        status=403,
    )


# --- tokens -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenClaims:
    tenant_id: str
    channel_id: str
    visitor_id: str
    expires_at: int


def token_issue(*, channel: Channel, visitor_id: str, now: float | None = None) -> tuple[str, int]:
    now = int(time.time() if now is None else now)
    expires_at = now + int(settings.WEBCHAT_JWT_TTL_SECONDS)
    claims = {
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": visitor_id,
        "tnt": str(channel.tenant_id),
        "chn": str(channel.pk),
        "iat": now,
        "exp": expires_at,
    }
    return jwt.encode(claims, _jwt_key(), algorithm="HS256"), expires_at


def token_verify(*, token: str) -> TokenClaims:
    if not token:
        raise WebchatError("token_missing", "No session token; start a session first.", status=401)
    try:
        claims = jwt.decode(
            token,
            _jwt_key(),
            algorithms=["HS256"],
            audience=TOKEN_AUDIENCE,
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise WebchatError("token_expired", "The session token has expired; start a new session.", status=401) from None
    except jwt.PyJWTError:
        raise WebchatError("token_invalid", "The session token is not valid.", status=401) from None
    if not all(isinstance(claims.get(k), str) for k in ("tnt", "chn", "sub")):
        raise WebchatError("token_invalid", "The session token is not valid.", status=401)
    return TokenClaims(
        tenant_id=claims["tnt"], channel_id=claims["chn"], visitor_id=claims["sub"], expires_at=int(claims["exp"])
    )


# --- channel lookup -----------------------------------------------------------------------------------


def channel_for_widget(*, widget_key: str) -> Channel:
    channel = (
        Channel.objects.select_related("tenant")
        .filter(type=Channel.Type.WEBCHAT, external_id=widget_key or "\x00")
        .first()
    )
    if channel is None:
        raise WebchatError("unknown_widget", "No chat widget has this key.", status=404)
    ensure_channel_open(channel)
    return channel


def channel_for_claims(claims: TokenClaims) -> Channel:
    """The channel a token names, looked up within the token's tenant only."""
    channel = (
        Channel.objects.for_tenant(claims.tenant_id)
        .select_related("tenant")
        .filter(type=Channel.Type.WEBCHAT, pk=claims.channel_id)
        .first()
    )
    if channel is None:
        raise WebchatError("token_invalid", "The session token names no chat widget.", status=401)
    ensure_channel_open(channel)
    return channel


def ensure_channel_open(channel: Channel) -> None:
    if not channel.is_active or not channel.tenant.is_active:
        raise WebchatError("channel_inactive", "This chat is switched off.", status=403)


# --- sessions -----------------------------------------------------------------------------------------


@dataclass
class WebchatSession:
    token: str
    expires_at: int
    visitor_id: str
    visitor_token: str
    resumed: bool
    channel: Channel
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_response(self) -> dict[str, Any]:
        config = self.channel.config or {}
        return {
            "token": self.token,
            "expires_at": self.expires_at,
            "visitor_id": self.visitor_id,
            "visitor_token": self.visitor_token,
            "resumed": self.resumed,
            "websocket_path": "/ws/webchat/",
            "history": self.history,
            # The visitor's credential for its files: the widget adds it to their URLs (webchat_media).
            "media_key": webchat_media.media_key(channel_id=self.channel.pk, visitor_id=self.visitor_id),
            "widget": {
                "title": str(config.get("title") or self.channel.tenant.name),
                "greeting": str(config.get("greeting") or ""),
                "max_message_chars": int(settings.WEBCHAT_MAX_MESSAGE_CHARS),
            },
        }


def session_start(*, widget_key: str, origin: str, client: str, visitor_token: str = "") -> WebchatSession:
    """Issue a session for a new or returning visitor of the widget, with the visitor's recent history.

    ``client`` is the caller's address (tenants.ratelimit.client_address): sessions are limited per
    widget and address (checked before any database work) and per widget from every address."""
    _session_rate_limit(
        group="webchat.sessions.address",
        key=f"{widget_key}|{client}",
        limit=int(settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE),
        message="Too many chat sessions from your network",
    )
    channel = channel_for_widget(widget_key=widget_key)
    _session_rate_limit(
        group="webchat.sessions.channel",
        key=str(channel.pk),
        limit=int(settings.WEBCHAT_SESSIONS_PER_CHANNEL_PER_MINUTE),
        message="This chat is starting too many sessions",
    )
    check_origin(channel=channel, origin=origin)
    visitor_id = visitor_from_token(channel=channel, visitor_token=visitor_token) if visitor_token else None
    resumed = visitor_id is not None
    if visitor_id is None:
        visitor_id = new_visitor_id()
    token, expires_at = token_issue(channel=channel, visitor_id=visitor_id)
    history = visitor_history(channel=channel, visitor_id=visitor_id) if resumed else []
    return WebchatSession(
        token=token,
        expires_at=expires_at,
        visitor_id=visitor_id,
        visitor_token=visitor_token_for(channel=channel, visitor_id=visitor_id),
        resumed=resumed,
        channel=channel,
        history=history,
    )


def _session_rate_limit(*, group: str, key: str, limit: int, message: str) -> None:
    verdict = ratelimit.hit(group=group, key=key, limit=limit)
    if not verdict.allowed:
        metrics.incr("webchat_refusals_total", reason=group)
        raise WebchatError(
            "rate_limited",
            f"{message}; try again in {verdict.retry_after} s.",
            status=429,
            details={"retry_after": verdict.retry_after, "limit": verdict.limit},
        )


# --- inbound messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    client_message_id: str
    status: str  # "stored" | "duplicate"
    inbound_id: int | None


def receive_message(
    *,
    channel: Channel,
    visitor_id: str,
    client_message_id: str,
    text: str,
    page_url: Any = None,
    reply: dict[str, str] | None = None,
) -> Received:
    """Validate and store one visitor message once (by client message id); the pipeline takes it after
    commit. ``reply`` ({"id", "message_id"}): the message is a tapped option (``receive_choice``)."""
    if not isinstance(client_message_id, str) or not _CLIENT_MESSAGE_ID.match(client_message_id):
        raise WebchatError(
            "invalid_message_id", "client_message_id must be 8-128 characters of letters, digits and ._:-"
        )
    if not isinstance(text, str) or not text.strip():
        raise WebchatError("empty_message", "The message is empty.")
    limit = int(settings.WEBCHAT_MAX_MESSAGE_CHARS)
    if len(text) > limit:
        raise WebchatError(
            "message_too_long",
            f"The message has {len(text)} characters; the limit is {limit}.",
            details={"limit": limit},
        )
    ensure_channel_still_open(channel)
    _rate_limit(channel=channel, visitor_id=visitor_id)
    parsed = _adapter.parse(
        {
            "channel_external_id": channel.external_id,
            "visitor_id": visitor_id,
            "client_message_id": client_message_id,
            "text": text,
            # The page the visitor was on, for the agent's contact panel (an http(s) URL, else nothing).
            **({"page_url": page_url[:2000]} if _is_page_url(page_url) else {}),
            **({"reply": reply} if reply is not None else {}),
        }
    )
    # One INSERT ... ON CONFLICT DO NOTHING: atomic on its own, so no surrounding transaction (two
    # round trips fewer per message); record_inbound enqueues the new row right after it.
    created = record_inbound(channel=channel, messages=parsed.messages)
    return Received(
        client_message_id=client_message_id,
        status="stored" if created else "duplicate",
        inbound_id=created[0] if created else None,
    )


def receive_choice(
    *, channel: Channel, visitor_id: str, client_message_id: str, token: Any, page_url: Any = None
) -> Received:
    """A tapped option: stored as the visitor's message (the option's title as text, its id as
    ``reply.payload``, as a WhatsApp button reply is). Only an option offered to this visitor on this
    widget is taken (its token is signed: channels_app.webchat_media.choices_item)."""
    tap = webchat_media.choice_open(token, widget_key=channel.external_id, visitor_id=visitor_id)
    if tap is None:
        raise WebchatError("invalid_choice", "This option was not offered to you.")
    return receive_message(
        channel=channel,
        visitor_id=visitor_id,
        client_message_id=client_message_id,
        text=tap.title,
        page_url=page_url,
        reply={"id": tap.option_id, "message_id": tap.message_id},
    )


def _is_page_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def receive_rating(*, channel: Channel, visitor_id: str, score: Any) -> bool:
    """A visitor's 1-5 answer to the closing satisfaction question: True when stored (False: no question
    was pending, or it was answered already)."""
    from conversations.inbox.services import InboxError, rate_contact

    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise WebchatError("invalid_score", "The rating must be a whole number from 1 to 5.")
    ensure_channel_still_open(channel)
    try:
        return rate_contact(channel=channel, contact_external_id=visitor_id, score=score) is not None
    except InboxError as exc:
        raise WebchatError(exc.code, str(exc)) from None


def ensure_channel_still_open(channel: Channel) -> None:
    """Read again whether the channel (and its tenant) is on: a socket opened before it was switched off
    must not have messages stored, whichever way it was switched off and whether or not the close
    notice (``close_channel_sockets``) reached the socket's process."""
    if not Channel.objects.filter(pk=channel.pk, is_active=True, tenant__is_active=True).exists():
        raise WebchatError("channel_inactive", "This chat is switched off.", status=403)


def _rate_limit(*, channel: Channel, visitor_id: str) -> None:
    """Messages per visitor per minute (in Redis, shared by every server process; one round trip)."""
    verdict = ratelimit.hit_pipelined(
        group="webchat.messages",
        key=f"{channel.pk}|{visitor_id}",
        limit=int(settings.WEBCHAT_RATE_LIMIT_PER_MINUTE),
    )
    if not verdict.allowed:
        raise WebchatError(
            "rate_limited",
            f"Too many messages; wait {verdict.retry_after} s.",
            status=429,
            details={"retry_after": verdict.retry_after, "limit": verdict.limit},
        )


# --- history ------------------------------------------------------------------------------------------


def visitor_history(*, channel: Channel, visitor_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The visitor's recent messages on this channel, oldest first.

    The visitor's own messages come from what the channel received (so a message stored before the
    pipeline handled it is there too, with its processing status); replies come from the
    conversation's outbound messages (assistant, agent, system notices) with their sources.
    """
    from conversations.models import Message

    limit = int(limit or settings.WEBCHAT_HISTORY_LIMIT)
    inbound = list(
        InboundEvent.objects.for_tenant(channel.tenant_id)
        .filter(channel=channel, sender_external_id=visitor_id, kind=InboundEvent.Kind.MESSAGE)
        .order_by("-id")
        .values("dedupe_key", "normalized", "status", "received_at")[:limit]
    )
    outbound = list(
        Message.objects.for_tenant(channel.tenant_id)
        .filter(
            channel=channel,
            conversation__contact__external_id=visitor_id,
            direction=Message.Direction.OUTBOUND,
            sender__in=[Message.Sender.ASSISTANT, Message.Sender.AGENT, Message.Sender.SYSTEM],
        )
        .order_by("-id")
        .values("id", "platform_message_id", "sender", "content", "payload", "status", "created_at")[:limit]
    )
    items: list[tuple[float, dict[str, Any]]] = []
    chosen: dict[str, str] = {}  # choices message id -> the option id the visitor tapped
    for row in inbound:
        normalized = row["normalized"] or {}
        if isinstance(normalized.get("reply"), dict) and normalized.get("context_message_id"):
            chosen.setdefault(str(normalized["context_message_id"]), str(normalized["reply"].get("id") or ""))
        items.append(
            (
                row["received_at"].timestamp(),
                {
                    "id": row["dedupe_key"],
                    "client_message_id": row["dedupe_key"],
                    "role": "user",
                    "text": (row["normalized"] or {}).get("text", ""),
                    "sources": [],
                    # Stored is all the visitor needs to know; what the pipeline made of it is separate.
                    "status": "stored",
                    "processing": row["status"],
                    "created_at": row["received_at"].isoformat(),
                },
            )
        )
    for out_row in outbound:
        payload = out_row["payload"] if isinstance(out_row["payload"], dict) else {}
        item: dict[str, Any] = {
            "id": out_row["platform_message_id"] or wire_message_id(out_row["id"]),
            "role": out_row["sender"],
            "text": out_row["content"],
            "sources": clean_sources(payload.get("sources")) if isinstance(payload.get("sources"), list) else [],
            "status": out_row["status"],
            "created_at": out_row["created_at"].isoformat(),
        }
        _add_rich_parts(item, payload, channel=channel, visitor_id=visitor_id)
        items.append((out_row["created_at"].timestamp(), item))
    for _, item in items:
        if item.get("choices") and item["id"] in chosen:
            item["choices"]["answered"] = True
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items[-limit:]]


def _add_rich_parts(item: dict[str, Any], payload: dict[str, Any], *, channel: Channel, visitor_id: str) -> None:
    """A sent file (``payload.media``, as channels_app.services.outbound_media stores it) and options to
    tap (``payload.choices``, a Choices as a dict) as the widget shows them live."""
    media = payload.get("media")
    if isinstance(media, dict) and (media.get("storage_path") or media.get("link")):
        item["media"] = [
            webchat_media.media_item(widget_key=channel.external_id, visitor_id=visitor_id, described=media)
        ]
        item["text"] = str(media.get("caption") or item["text"] or "")
    choices = payload.get("choices")
    if isinstance(choices, dict) and isinstance(choices.get("options"), list):
        item["choices"] = webchat_media.choices_item(
            widget_key=channel.external_id, visitor_id=visitor_id, message_id=item["id"], choices=choices
        )
        item["text"] = str(choices.get("body") or item["text"] or "")


# --- sockets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketSession:
    tenant_id: str
    channel: Channel
    visitor_id: str
    expires_at: int


def socket_authenticate(*, token: str, origin: str) -> SocketSession:
    """What the consumer checks at connect: a valid, unexpired token and an Origin the channel allows."""
    claims = token_verify(token=token)
    channel = channel_for_claims(claims)
    check_origin(channel=channel, origin=origin)
    return SocketSession(
        tenant_id=claims.tenant_id, channel=channel, visitor_id=claims.visitor_id, expires_at=claims.expires_at
    )


def socket_open(*, token: str, origin: str, socket_name: str) -> SocketSession:
    """``socket_authenticate``, then a place among the visitor's open sockets (``socket_claim``)."""
    session = socket_authenticate(token=token, origin=origin)
    if not socket_claim(channel=session.channel, visitor_id=session.visitor_id, socket_name=socket_name):
        limit = int(settings.WEBCHAT_MAX_SOCKETS_PER_VISITOR)
        metrics.incr("webchat_refusals_total", reason="webchat.sockets")
        raise WebchatError(
            "too_many_connections",
            f"This visitor already has {limit} chat connections open; close a tab and try again.",
            status=429,
            details={"limit": limit},
        )
    return session


# Open sockets per visitor: a sorted set per (channel, visitor) in Redis, shared by every server
# process, of socket names scored by when their lease ends. A socket renews its lease while it lives
# (the consumer, every third of it) and removes itself when it closes; the lease is what frees the
# places of the sockets of a process that died without closing them.
SOCKET_LEASE_SECONDS = 90


def _sockets_key(channel: Channel, visitor_id: str) -> str:
    digest = hashlib.sha256(f"{channel.pk}\x00{visitor_id}".encode()).hexdigest()[:40]
    return f"{settings.REDIS_KEY_PREFIX}:webchat:sockets:{digest}"


def socket_claim(*, channel: Channel, visitor_id: str, socket_name: str) -> bool:
    """Count this socket among the visitor's open sockets; False (and not counted) if that would make
    more than WEBCHAT_MAX_SOCKETS_PER_VISITOR."""
    limit = int(settings.WEBCHAT_MAX_SOCKETS_PER_VISITOR)
    if limit <= 0:
        return True
    key = _sockets_key(channel, visitor_id)
    now = time.time()
    try:
        pipe = redis_client().pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {socket_name: now + SOCKET_LEASE_SECONDS})
        pipe.zcard(key)
        pipe.expire(key, SOCKET_LEASE_SECONDS)
        count = pipe.execute()[2]
        if count <= limit:
            return True
        redis_client().zrem(key, socket_name)
    except redis.RedisError as exc:  # the cache being down must not stop the chat
        logger.warning("web chat socket count skipped: redis unavailable", extra={"error": str(exc)})
        metrics.incr("ratelimit_unavailable_total", group="webchat.sockets")
        return True
    return False


def socket_renew(*, channel: Channel, visitor_id: str, socket_name: str) -> None:
    key = _sockets_key(channel, visitor_id)
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.zadd(key, {socket_name: time.time() + SOCKET_LEASE_SECONDS})
        pipe.expire(key, SOCKET_LEASE_SECONDS)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("web chat socket lease not renewed: redis unavailable", extra={"error": str(exc)})


def socket_release(*, channel: Channel, visitor_id: str, socket_name: str) -> None:
    try:
        redis_client().zrem(_sockets_key(channel, visitor_id), socket_name)
    except redis.RedisError as exc:  # the lease frees the place later
        logger.warning("web chat socket not released: redis unavailable", extra={"error": str(exc)})


# --- switching a channel off --------------------------------------------------------------------------

# The consumer's handler for the close notice ("webchat.channel_closed" -> webchat_channel_closed).
CHANNEL_CLOSED_EVENT_TYPE = "webchat.channel_closed"
# The switched-off notice waits at most this long for the channel layer (the sockets are refused anyway).
CLOSE_NOTICE_TIMEOUT = 5.0


def channel_group(channel_id: UUID) -> str:
    """Channel-layer group of every open socket of one web chat channel (all visitors, all processes)."""
    return f"webchat.channel.{hashlib.sha256(str(channel_id).encode()).hexdigest()[:40]}"


def close_tenant_sockets(event: Any) -> None:
    """Event-bus subscriber of ``tenant.updated``: when a tenant is switched off, its web chat sockets
    close as a switched-off channel's do (the tenants area knows nothing of sockets)."""
    if "is_active" not in (event.payload or {}).get("fields", []):
        return
    channels = Channel.objects.filter(tenant_id=event.tenant_id, tenant__is_active=False, type=Channel.Type.WEBCHAT)
    for channel_id in channels.values_list("pk", flat=True):
        close_channel_sockets(channel_id=channel_id)


def close_channel_sockets(*, channel_id: UUID) -> None:
    """Close every open socket of a web chat channel that was switched off or deleted: each gets an
    ``error`` frame (``channel_inactive``) and the close code 4403. Call it after the change commits.
    If the notice is lost (Redis down), the sockets still have every message refused
    (``ensure_channel_still_open``), and closed at their next one."""
    try:
        channel_layer.group_send(
            channel_group(channel_id),
            {"type": CHANNEL_CLOSED_EVENT_TYPE, "code": "channel_inactive", "message": "This chat is switched off."},
            timeout=CLOSE_NOTICE_TIMEOUT,
        )
    except (redis.RedisError, OSError) as exc:  # OSError: TimeoutError too
        logger.warning(
            "web chat sockets not told the channel is off: channel layer unavailable",
            extra={"channel_id": str(channel_id), "error": str(exc)},
        )
