"""Webhook intake: find the channels a payload is addressed to (cached routes and signature
verifiers), verify, store once and answer Meta; the GET verification handshake."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from channels_app import inbound, unrouted
from channels_app.adapters.base import (
    ACCOUNT_PREFIX,
    NormalizedMessage,
    ParsedPayload,
    PreparedVerifierAdapter,
    StatusUpdate,
    get_adapter,
)
from channels_app.models import Channel, ChannelSecret
from channels_app.secrets import with_channel_secret
from channels_app.services import identities, templates_status
from config import metrics
from config.errors import error_body
from tenants.secrets import SecretError

logger = logging.getLogger(__name__)


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

    def build(credentials: dict[str, str]) -> Any:
        if not credentials.get("app_secret"):
            return None
        if isinstance(adapter, PreparedVerifierAdapter):
            return adapter.signature_verifier(credentials["app_secret"])
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
        by_ext: dict[str, Route] = {}
        for channel in _channels_for(platform, missing):
            try:
                secret: ChannelSecret | None = channel.secret
            except ChannelSecret.DoesNotExist:
                secret = None
            ext = channel.external_id if channel.external_id in missing else _account_id(channel)
            by_ext.setdefault(ext, Route(channel=channel, verify=_verifier_for(channel, secret)))
        found.update(by_ext)
        if ttl > 0:
            with _cache_lock:
                for ext in missing:
                    _routes[(platform, ext)] = (now + ttl, by_ext.get(ext))
    return found


def _channels_for(platform: str, ids: list[str]) -> list[Channel]:
    """The channels these routing ids name: external ids, and business accounts ("account:<waba id>",
    the channels whose ``config.waba_id`` it is; the oldest answers for the account)."""
    plain = [i for i in ids if not i.startswith(ACCOUNT_PREFIX)]
    accounts = [i[len(ACCOUNT_PREFIX) :] for i in ids if i.startswith(ACCOUNT_PREFIX)]
    found: list[Channel] = []
    if plain:
        found += list(Channel.objects.filter(type=platform, external_id__in=plain).select_related("secret"))
    if accounts:
        rows = Channel.objects.filter(type=platform, config__waba_id__in=accounts).exclude(external_id="")
        found += list(rows.select_related("secret").order_by("created_at"))
    return found


def _account_route(platform: str, ext: str, first: Route, body: bytes, headers: Mapping[str, str]) -> Route:
    """Any tenant can type a business account id into its channel's config, so the account's news go
    to the channel whose app secret verifies them, not merely to the oldest channel naming it."""
    if first.verify is not None and first.verify(body, headers):
        return first
    for channel in _channels_for(platform, [ext]):
        if channel.pk == first.channel.pk:
            continue
        try:
            secret: ChannelSecret | None = channel.secret
        except ChannelSecret.DoesNotExist:
            secret = None
        verify = _verifier_for(channel, secret)
        if verify is not None and verify(body, headers):
            return Route(channel=channel, verify=verify)
    return first


def _account_id(channel: Channel) -> str:
    return f"{ACCOUNT_PREFIX}{(channel.config or {}).get('waba_id', '')}"


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
    for ext in [e for e in routes if e.startswith(ACCOUNT_PREFIX)]:
        routes[ext] = _account_route(platform, ext, routes[ext], body, headers)
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
    if parsed.account_updates:
        stored += templates_status.apply({ext: route.channel for ext, route in routes.items()}, parsed.account_updates)
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
    for ext, (messages, _statuses) in groups.items():
        if messages:
            identities.resolve_senders(channel=routes[ext].channel, messages=messages)
            if any(len(m.text) <= 20 and m.text.strip() for m in messages):  # a possible opt-out word
                from channels_app.services import campaigns  # (sending imports this module)

                campaigns.record_opt_outs(channel=routes[ext].channel, messages=messages)
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
