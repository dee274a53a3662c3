"""Channel operations: manage channels and their credentials, receive webhooks, send replies, apply
delivery statuses, fetch inbound media. Views, admin, tasks and the turn pipeline call these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from channels_app import inbound, unrouted, webchat
from channels_app.adapters.base import (
    Media,
    NormalizedMessage,
    ParsedPayload,
    SendError,
    SendResult,
    StatusUpdate,
    get_adapter,
)
from channels_app.graph import GraphClient
from channels_app.models import Channel, ChannelSecret, InboundEvent
from channels_app.secrets import channel_secret_names, channel_secret_set, with_channel_secret
from config import metrics
from config.errors import error_body
from config.health import CheckResult, register_check
from conversations.statuses import StatusNotApplicable, message_status_update
from events.services import emit
from events.types import EventType
from tenants.models import Tenant
from tenants.secrets import SecretError

T = TypeVar("T")
logger = logging.getLogger(__name__)

META_PLATFORMS = ("whatsapp", "messenger")
CREDENTIAL_NAMES = ("app_secret", "access_token", "verify_token")

# --- channel management -----------------------------------------------------------------------------


class ChannelError(Exception):
    """A channel operation was refused; ``field`` names the input at fault. ``code``: ``conflict`` (409),
    ``unavailable`` (503: Meta could not be asked now), anything else 400."""

    def __init__(self, message: str, *, field: str = "", code: str = "invalid"):
        super().__init__(message)
        self.field = field
        self.code = code


# Meta's ids are numeric; checked before one becomes a Graph API path.
_META_ID = re.compile(r"[0-9]{1,32}")


def _check_external_id(*, type: str, external_id: str, exclude_pk: Any = None) -> None:
    if type in META_PLATFORMS and not external_id:
        label = "phone_number_id" if type == "whatsapp" else "page_id"
        raise ChannelError(f"a {type} channel needs its {label}", field="external_id", code="required")
    if external_id:
        clash = Channel.objects.filter(type=type, external_id=external_id)
        if exclude_pk is not None:
            clash = clash.exclude(pk=exclude_pk)
        if clash.exists():
            # Across tenants on purpose: inbound traffic is routed by this id alone.
            raise ChannelError(
                f"another {type} channel already uses external id {external_id}", field="external_id", code="conflict"
            )


def graph_can_read(*, type: str, external_id: str, access_token: str) -> bool:
    """Whether Meta says this access token reaches this WhatsApp phone number id or Messenger page.

    WhatsApp: ``GET /{phone-number-id}`` answers the number only to a token of the business that owns
    it. Messenger: ``GET /me`` with a Page access token answers that page (a page token is issued for one
    page), so another page's public id, which many tokens can read, does not pass. Raises ChannelError
    ``unavailable`` when Meta cannot be asked now (throttled, 5xx, unreachable)."""
    if not external_id.isdigit():
        return False  # Meta's ids are numbers; anything else would only put a tenant's text in the Graph path
    client = GraphClient(access_token=access_token)
    try:
        if type == Channel.Type.WHATSAPP:
            read = client.read_object_id(external_id, fields="id,display_phone_number,verified_name")
        else:
            read = client.read_object_id("me", fields="id,name")
    except SendError as exc:
        logger.warning("channel id check: graph api unavailable", extra={"type": type, "error": str(exc)[:200]})
        raise ChannelError(
            "Meta's Graph API could not confirm the id now; try again in a minute.", code="unavailable"
        ) from None
    return read == external_id


@dataclass
class ExternalIdClaim:
    """What taking an id means once Meta vouched for the claimant: the channels to release first."""

    external_id: str
    release: list[Any] = field(default_factory=list)  # holder channel ids


def external_id_claim_verify(
    *, tenant: Tenant, type: str, external_id: str, access_token: str, exclude_pk: Any = None
) -> ExternalIdClaim:
    """Before a WhatsApp/Messenger channel takes ``external_id``: Meta must confirm the tenant's own
    access token reaches it, and no other channel may hold it. Graph calls happen here, outside any
    transaction; ``external_id_claim_apply`` then acts under row locks.

    Every refusal reads the same whether or not the id is in use elsewhere; only a tenant Meta vouches
    for learns more. When another tenant's channel holds the id and Meta no longer vouches for that
    channel's token (a squatter, or a business that moved), the verified claimant takes the id over: the
    old channel is released and disabled, and its tenant gets a ``channel.disabled`` event. When Meta
    vouches for both, the id stays where it is (409, "contact support"): an operator decides."""
    label = "phone number id" if type == Channel.Type.WHATSAPP else "page id"
    if not _META_ID.fullmatch(external_id):
        raise ChannelError(f"a {type} {label} is a number", field="external_id")
    if not access_token:
        raise ChannelError(
            f"an access_token is needed: Meta must confirm it can read this {label}", field="credentials.access_token"
        )
    if not graph_can_read(type=type, external_id=external_id, access_token=access_token):
        raise ChannelError(
            f"Meta did not confirm that this access token can read {label} {external_id}: use a token of the "
            "business that owns it (WhatsApp: a system user token with whatsapp_business_messaging; Messenger: "
            "the page's own access token)",
            field="external_id",
        )
    claim = ExternalIdClaim(external_id=external_id)
    holders = Channel.objects.filter(type=type, external_id=external_id)
    if exclude_pk is not None:
        holders = holders.exclude(pk=exclude_pk)
    for holder in holders:
        if holder.tenant_id == tenant.pk:
            raise ChannelError(
                f"another channel of this tenant already uses {label} {external_id}",
                field="external_id",
                code="conflict",
            )
        holder_token = with_channel_secret(
            channel=holder, fn=lambda values: values.get("access_token", ""), missing_ok=True
        )
        if holder_token and graph_can_read(type=type, external_id=external_id, access_token=holder_token):
            logger.warning(
                "channel id claimed by two verified tenants",
                extra={"type": type, "holder_channel_id": str(holder.pk), "claimant_tenant_id": str(tenant.pk)},
            )
            raise ChannelError(f"this {label} cannot be used; contact support", field="external_id", code="conflict")
        claim.release.append(holder.pk)
    return claim


def external_id_claim_apply(claim: ExternalIdClaim) -> None:
    """Release the holders Meta no longer vouches for (inside the caller's transaction)."""
    reason = "its external id was claimed by a business whose Meta token can read it; this channel's token cannot"
    for holder in Channel.objects.select_for_update().filter(pk__in=claim.release, external_id=claim.external_id):
        Channel.objects.filter(pk=holder.pk).update(
            external_id="", is_active=False, sending_disabled_reason=reason, updated_at=timezone.now()
        )
        emit(
            tenant=holder.tenant_id,
            type=EventType.CHANNEL_DISABLED,
            payload={"channel_id": str(holder.pk), "type": holder.type, "reason": reason},
        )
        logger.warning(
            "channel external id taken over by a verified claimant",
            extra={"channel_id": str(holder.pk), "type": holder.type},
        )


def _id_taken(external_id: str) -> ChannelError:
    # A concurrent claim won the unique constraint; the loser hears what any other refusal says.
    return ChannelError(
        f"external id {external_id} cannot be used; contact support", field="external_id", code="conflict"
    )


def channel_create(
    *,
    tenant: Tenant,
    type: str,
    name: str,
    external_id: str = "",
    config: dict[str, Any] | None = None,
    is_active: bool = True,
    credentials: dict[str, str] | None = None,
    verify_claim: bool = False,
) -> Channel:
    """Create a channel. With ``verify_claim`` (every tenant-facing path sets it) a WhatsApp/Messenger id
    is taken only once Meta confirms the given ``access_token`` can read it (``external_id_claim_verify``); without
    it (fixtures, the demo, the benchmarks) the id is one the operator vouches for."""
    if type not in Channel.Type.values:
        raise ChannelError(f"unknown channel type '{type}'", field="type")
    claim = None
    if verify_claim and type in META_PLATFORMS and external_id:
        token = (credentials or {}).get("access_token", "")
        claim = external_id_claim_verify(tenant=tenant, type=type, external_id=external_id, access_token=token)
    else:
        _check_external_id(type=type, external_id=external_id)
    try:
        with transaction.atomic():
            if claim is not None:
                external_id_claim_apply(claim)
            channel = Channel.objects.create(
                tenant=tenant,
                type=type,
                name=name,
                external_id=external_id,
                config=config or {},
                is_active=is_active,
            )
            if credentials:
                channel_set_credentials(channel=channel, credentials=credentials)
    except IntegrityError:
        raise _id_taken(external_id) from None
    if claim is not None:
        clear_route_cache()
    return channel


def channel_update(*, channel: Channel, verify_claim: bool = False, access_token: str = "", **changes: Any) -> Channel:
    """Change name, external id, config or ``is_active``. With ``verify_claim`` a new WhatsApp/Messenger id
    is claimed as in ``channel_create``, with ``access_token`` (sent along) or else the stored one."""
    allowed = {"name", "external_id", "config", "is_active"}
    unknown = set(changes) - allowed
    if unknown:
        raise ChannelError(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    claim = None
    new_id = changes.get("external_id", channel.external_id)
    if new_id != channel.external_id:
        if verify_claim and channel.type in META_PLATFORMS and new_id:
            token = access_token or with_channel_secret(
                channel=channel, fn=lambda values: values.get("access_token", ""), missing_ok=True
            )
            claim = external_id_claim_verify(
                tenant=channel.tenant,
                type=channel.type,
                external_id=new_id,
                access_token=token or "",
                exclude_pk=channel.pk,
            )
        else:
            _check_external_id(type=channel.type, external_id=new_id, exclude_pk=channel.pk)
    for key, value in changes.items():
        setattr(channel, key, value)
    try:
        with transaction.atomic():
            if claim is not None:
                external_id_claim_apply(claim)
            channel.save()
    except IntegrityError:
        raise _id_taken(new_id) from None
    clear_route_cache()
    if channel.type == Channel.Type.WEBCHAT and not channel.is_active:
        transaction.on_commit(lambda: webchat.close_channel_sockets(channel_id=channel.pk))
    return channel


def channel_set_credentials(*, channel: Channel, credentials: dict[str, str]) -> list[str]:
    """Store (merge) credentials, encrypted. New credentials re-enable a channel disabled by Meta's 190.

    Returns the names of all credentials now set (never values)."""
    values = {k: v for k, v in credentials.items() if v not in (None, "")}
    if not values:
        return channel_credential_names(channel=channel)
    with transaction.atomic():
        channel_secret_set(channel=channel, values=values)
        if channel.sending_disabled_reason and "access_token" in values:
            channel.sending_disabled_reason = ""
            channel.save(update_fields=["sending_disabled_reason", "updated_at"])
        emit(
            tenant=channel.tenant_id,
            type=EventType.SECRET_UPDATED,
            payload={"channel_id": str(channel.pk), "names": sorted(values)},
        )
    clear_route_cache()
    return channel_credential_names(channel=channel)


def channel_credential_names(*, channel: Channel) -> list[str]:
    return channel_secret_names(channel=channel)


def channel_delete(*, channel: Channel) -> None:
    channel_id = channel.pk
    channel.delete()
    clear_route_cache()
    if channel.type == Channel.Type.WEBCHAT:
        transaction.on_commit(lambda: webchat.close_channel_sockets(channel_id=channel_id))


def channel_disable_sending(*, channel: Channel, reason: str) -> bool:
    """Stop all sends on this channel until new credentials arrive; emit ``channel.disabled`` once."""
    reason = reason[:500]
    with transaction.atomic():
        changed = (
            Channel.objects.for_tenant(channel.tenant_id)
            .filter(pk=channel.pk, sending_disabled_reason="")
            .update(sending_disabled_reason=reason, updated_at=timezone.now())
        )
        channel.sending_disabled_reason = reason
        if changed:
            emit(
                tenant=channel.tenant_id,
                type=EventType.CHANNEL_DISABLED,
                payload={"channel_id": str(channel.pk), "type": channel.type, "reason": reason},
            )
    if changed:
        logger.error("channel sending disabled", extra={"channel_id": str(channel.pk), "reason": reason})
    return bool(changed)


def channel_enable_sending(*, channel: Channel) -> None:
    Channel.objects.for_tenant(channel.tenant_id).filter(pk=channel.pk).update(
        sending_disabled_reason="", updated_at=timezone.now()
    )
    channel.sending_disabled_reason = ""


# --- webhook intake ------------------------------------------------------------------------------------


@dataclass
class Route:
    """A channel found for an inbound payload, with a verifier of its app secret (None: not set)."""

    channel: Channel
    verify: Callable[[bytes, Mapping[str, str]], bool] | None


@dataclass
class WebhookOutcome:
    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


# Verifiers keyed by channel id, valid for one version of its ChannelSecret (updated_at, key id).
_verifiers: dict[Any, tuple[tuple[Any, ...], Any]] = {}
# (platform, external id) -> (expiry, Route or None); only used when WEBHOOK_CHANNEL_CACHE_SECONDS > 0.
_routes: dict[tuple[str, str], tuple[float, Route | None]] = {}
_cache_lock = threading.Lock()


def clear_route_cache() -> None:
    """Forget cached routes and verifiers (this process). Secrets changes are also caught by version."""
    with _cache_lock:
        _routes.clear()
        _verifiers.clear()


def _verifier_for(channel: Channel, secret: ChannelSecret | None) -> Any:
    if secret is None:
        return None
    version = (secret.updated_at, secret.key_id)
    cached = _verifiers.get(channel.pk)
    if cached is not None and cached[0] == version:
        return cached[1]
    adapter = get_adapter(channel.type)
    make = getattr(adapter, "signature_verifier", None)

    def build(credentials: dict[str, str]) -> Any:
        if not credentials.get("app_secret"):
            return None
        if make is not None:
            return make(credentials["app_secret"])
        # An adapter without a prepared verifier: verify against the credentials each time.
        app_secret = credentials["app_secret"]
        return lambda body, headers: adapter.verify_signature(
            body=body, headers=dict(headers), credentials={"app_secret": app_secret}
        )

    try:
        verifier = with_channel_secret(channel=channel, fn=build, missing_ok=True)
    except SecretError:
        logger.exception("channel credentials cannot be decrypted", extra={"channel_id": str(channel.pk)})
        verifier = None
    with _cache_lock:
        _verifiers[channel.pk] = (version, verifier)
    return verifier


def find_routes(*, platform: str, external_ids: list[str]) -> dict[str, Route]:
    """Channels of ``platform`` addressed by these ids (active or not: the pipeline records why it
    does not answer an inactive one), each with its signature verifier."""
    ttl = float(settings.WEBHOOK_CHANNEL_CACHE_SECONDS)
    now = time.monotonic()
    found: dict[str, Route] = {}
    missing = list(external_ids)
    if ttl > 0:
        missing = []
        for ext in external_ids:
            hit = _routes.get((platform, ext))
            if hit is not None and hit[0] > now:
                if hit[1] is not None:
                    found[ext] = hit[1]
            else:
                missing.append(ext)
    if missing:
        rows = Channel.objects.filter(type=platform, external_id__in=missing).select_related("secret")
        by_ext: dict[str, Route] = {}
        for channel in rows:
            try:
                secret: ChannelSecret | None = channel.secret
            except ChannelSecret.DoesNotExist:
                secret = None
            by_ext[channel.external_id] = Route(channel=channel, verify=_verifier_for(channel, secret))
        found.update(by_ext)
        if ttl > 0:
            with _cache_lock:
                for ext in missing:
                    _routes[(platform, ext)] = (now + ttl, by_ext.get(ext))
    return found


def _too_deeply_nested() -> WebhookOutcome:
    # A 4xx, not 200: no sender can be known (nothing parsed, nothing verified), and Meta's own
    # payloads are a few levels deep, so no genuine delivery ends here to be retried.
    limit = settings.WEBHOOK_MAX_JSON_DEPTH
    return WebhookOutcome(400, "too_deeply_nested", f"The body is nested deeper than {limit} levels.")


def receive_webhook(*, platform: str, body: bytes, headers: Mapping[str, str], source: str = "") -> WebhookOutcome:
    """Verify, route and store one webhook POST; the caller answers with the outcome's status.

    Nothing is stored unless every channel the payload addresses verifies the signature with its own
    app secret. Inbound items are stored idempotently and enqueued after commit (channels_app.inbound).
    ``source`` is the sender's address, which bounds how many unrouted payloads it may have kept.
    """
    if len(body) > settings.WEBHOOK_MAX_BODY_BYTES:
        return WebhookOutcome(413, "payload_too_large", f"Body over {settings.WEBHOOK_MAX_BODY_BYTES} bytes.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return WebhookOutcome(400, "invalid_json", "The body is not valid JSON.", {"error": str(exc)[:200]})
    except RecursionError:  # deeper than the parser itself goes
        return _too_deeply_nested()
    if inbound.json_depth_exceeds(payload, body=body, limit=settings.WEBHOOK_MAX_JSON_DEPTH):
        return _too_deeply_nested()
    if not isinstance(payload, dict):
        return WebhookOutcome(400, "invalid_payload", "The body must be a JSON object.")
    adapter = get_adapter(platform)
    external_ids = adapter.routing_ids(payload)
    routes = find_routes(platform=platform, external_ids=external_ids) if external_ids else {}
    unknown = [ext for ext in external_ids if ext not in routes]
    if not routes:
        reason = "unknown ids" if external_ids else "no routable id in payload"
        kept = unrouted.keep(
            platform=platform, reason=reason, external_ids=external_ids, body=body, headers=headers, source=source
        )
        return WebhookOutcome(200, "unrouted", "No channel for this payload.", {"kept": kept})
    for ext, route in routes.items():
        if route.verify is None:
            unrouted.keep(
                platform=platform,
                reason="channel has no app secret",
                external_ids=[ext],
                body=body,
                headers=headers,
                source=source,
            )
            return WebhookOutcome(401, "channel_not_configured", "The channel has no app secret to verify with.")
        if not route.verify(body, headers):
            logger.warning(
                "webhook signature rejected",
                extra={"platform": platform, "channel_id": str(route.channel.pk), "external_id": ext},
            )
            return WebhookOutcome(401, "invalid_signature", "Missing or invalid X-Hub-Signature-256.")
    parsed = adapter.parse(payload)
    if unknown:
        unrouted.keep(
            platform=platform,
            reason="unknown ids beside known ones",
            external_ids=unknown,
            body=body,
            headers=headers,
            source=source,
        )
    stored = _store(routes, parsed)
    if parsed.ignored:
        logger.info("webhook parts ignored", extra={"platform": platform, "ignored": parsed.ignored[:20]})
    return WebhookOutcome(
        200,
        "ok",
        "Received.",
        {
            "stored": stored,
            "messages": len(parsed.messages),
            "statuses": len(parsed.statuses),
            "ignored": len(parsed.ignored),
        },
    )


def _store(routes: dict[str, Route], parsed: ParsedPayload) -> int:
    groups: dict[str, tuple[list[NormalizedMessage], list[StatusUpdate]]] = {}
    for message in parsed.messages:
        if message.channel_external_id in routes:
            groups.setdefault(message.channel_external_id, ([], []))[0].append(message)
    for status in parsed.statuses:
        if status.channel_external_id in routes:
            groups.setdefault(status.channel_external_id, ([], []))[1].append(status)
    if not groups:
        return 0
    if len(groups) == 1 and connection.get_autocommit():
        # One INSERT is atomic by itself: skip BEGIN/COMMIT round trips on the hot path.
        ext, (messages, statuses) = next(iter(groups.items()))
        return len(inbound.record_inbound(channel=routes[ext].channel, messages=messages, statuses=statuses))
    stored = 0
    with transaction.atomic():
        for ext, (messages, statuses) in groups.items():
            stored += len(inbound.record_inbound(channel=routes[ext].channel, messages=messages, statuses=statuses))
    return stored


def webhook_answer(
    *, platform: str, body: bytes, headers: Mapping[str, str], source: str = ""
) -> tuple[int, dict[str, Any]]:
    """``receive_webhook`` counted in the metrics, as (status, JSON body): the Django view and the ASGI
    fast path (channels_app.webhook_asgi) answer Meta exactly alike."""
    outcome = receive_webhook(platform=platform, body=body, headers=headers, source=source)
    metrics.incr("webhook_requests_total", platform=platform, outcome=outcome.code)
    if outcome.status != 200:
        return outcome.status, error_body(outcome.code, outcome.message, outcome.details or None)
    return 200, {"status": outcome.code, **outcome.details}


def webhook_too_large(*, platform: str) -> tuple[int, dict[str, Any]]:
    """The answer to a body declared or read over WEBHOOK_MAX_BODY_BYTES, before anything is parsed."""
    metrics.incr("webhook_requests_total", platform=platform, outcome="payload_too_large")
    return 413, error_body("payload_too_large", f"Body over {settings.WEBHOOK_MAX_BODY_BYTES} bytes.")


def verify_handshake(*, platform: str, mode: str, token: str) -> bool:
    """Meta's GET verification: ``hub.mode=subscribe`` and a verify token of one of the platform's channels."""
    if mode != "subscribe" or not token:
        return False
    wanted = hashlib.sha256(token.encode()).digest()
    matched = False
    for channel in Channel.objects.filter(type=platform).exclude(secret=None):
        stored = with_channel_secret(
            channel=channel,
            fn=lambda values: (
                hashlib.sha256(values.get("verify_token", "").encode()).digest() if values.get("verify_token") else b""
            ),
            missing_ok=True,
        )
        # Compare every candidate (no early exit) so timing does not reveal which channel matched.
        if stored:
            matched |= hmac.compare_digest(stored, wanted)
    return matched


# --- sending -----------------------------------------------------------------------------------------------


def _credentials_call(channel: Channel, call: Callable[[dict[str, str]], Any]) -> Any:
    try:
        return with_channel_secret(channel=channel, fn=call)
    except SecretError as exc:
        raise SendError(f"channel credentials unavailable: {exc}", code="no_credentials", permanent=True) from None


def call_adapter(*, channel: Channel, fn: Callable[[Any, dict[str, str]], T]) -> T:
    """``fn(adapter, credentials)`` for the channel: the one way anything is sent to a platform.

    Credentials are decrypted only for adapters that need them (web chat has none: no query); a
    missing credential is a permanent SendError; an invalid token disables the channel's sending
    (``channel.disabled`` event) before the SendError goes on to the caller."""
    adapter = get_adapter(channel.type)
    try:
        if not adapter.needs_credentials:
            return fn(adapter, {})
        return _credentials_call(channel, lambda credentials: fn(adapter, credentials))
    except SendError as exc:
        if exc.disable_channel:
            channel_disable_sending(channel=channel, reason=str(exc))
        raise


def guard_sendable(channel: Channel) -> None:
    if channel.sending_disabled_reason:
        raise SendError(
            f"sending is disabled for this channel: {channel.sending_disabled_reason}",
            code="channel_disabled",
            permanent=True,
        )


def send_reply(*, channel: Channel, recipient_id: str, text: str, reply_to_message_id: str = "") -> SendResult:
    """Send a text reply through the channel's adapter (split at the platform limit).

    Raises SendError: ``permanent`` ones must not be retried (outside the window, bad token, ...);
    an invalid token disables the channel's sending first (``channel.disabled`` event)."""
    guard_sendable(channel)
    return call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.send_text(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            text=text,
            credentials=credentials,
            reply_to_message_id=reply_to_message_id,
        ),
    )


def send_typing(*, channel: Channel, recipient_id: str, reply_to_message_id: str = "") -> bool:
    """Best effort "seen + typing" before a reply; never fails the turn (but a bad token disables)."""
    if channel.sending_disabled_reason:
        return False
    try:
        call_adapter(
            channel=channel,
            fn=lambda adapter, credentials: adapter.send_typing(
                channel_external_id=channel.external_id,
                recipient_id=recipient_id,
                reply_to_message_id=reply_to_message_id,
                credentials=credentials,
            ),
        )
    except SendError as exc:
        logger.warning("typing indicator not sent", extra={"channel_id": str(channel.pk), "error": str(exc)})
        return False
    return True


# --- delivery statuses -------------------------------------------------------------------------------------


class StatusTargetNotFound(Exception):
    """No outbound message carries this platform id (yet: the send may not be committed)."""


def apply_status_update(*, inbound_id: int, final_attempt: bool = False) -> str:
    """Hand one stored status update to the core (conversations.statuses), which moves the matching
    outbound message(s) forward; record the outcome on the inbound event. Idempotent.

    Returns what happened: ``skipped`` (not pending), ``applied``, ``unchanged``, ``ignored``.
    Raises StatusTargetNotFound when the message is not known yet and this is not the last attempt.
    """
    with transaction.atomic():
        row = InboundEvent.objects.select_for_update().filter(pk=inbound_id, kind=InboundEvent.Kind.STATUS).first()
        if row is None or row.status != InboundEvent.Status.PENDING:
            return "skipped"
        update = StatusUpdate(**row.normalized)
        row.attempts += 1
        try:
            changed = message_status_update(tenant=row.tenant_id, channel_id=row.channel_id, update=update)
        except StatusNotApplicable as exc:
            return _finish(row, InboundEvent.Status.IGNORED, str(exc))
        if changed is not None:
            return _finish(row, InboundEvent.Status.PROCESSED, "", result="applied" if changed else "unchanged")
        if final_attempt:
            return _finish(row, InboundEvent.Status.IGNORED, "no outbound message with this platform id")
        row.save(update_fields=["attempts"])
    # Raised after the commit so the attempt count survives; the task retries later.
    raise StatusTargetNotFound(update.message_id)


def _finish(row: InboundEvent, status: str, error: str, *, result: str = "ignored") -> str:
    row.status = status
    row.error = error
    row.processed_at = timezone.now()
    row.save(update_fields=["status", "error", "attempts", "processed_at"])
    if error:
        logger.info("status update not applied", extra={"inbound_id": row.pk, "reason": error})
    return result


# --- inbound media -----------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def media_storage_path(*, tenant_id: Any, channel_id: Any, message_id: str, index: int, mime_type: str) -> str:
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
    if not message.sender_name and hasattr(adapter, "fetch_profile"):
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


# --- health -------------------------------------------------------------------------------------------------


def check_channels() -> CheckResult:
    """Degraded while any channel cannot send (e.g. Meta token expired): an operator must act."""
    disabled = Channel.objects.exclude(sending_disabled_reason="").count()
    return CheckResult(ok=disabled == 0, detail={"sending_disabled": disabled})


register_check("channels", check_channels)
