"""emit(): the one way anything records an event; and the tenant webhook endpoint operations.

Delivery itself (fan-out, signed requests, retries, RabbitMQ) lives in events.delivery and
events.publisher and always starts from committed ``Event`` rows (the outbox).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from config import egress
from config.logs import get_correlation_id
from events import queries, signing
from events.models import Event, WebhookDelivery, WebhookEndpoint
from events.types import EventType
from tenants import secrets as secret_store
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Called after the emitting transaction commits, with the committed Event. Delivery components
# (tenant webhooks, RabbitMQ, in-process subscribers) register here; see events.bus / events.outbox.
_after_commit_hooks: list[Callable[[Event], None]] = []


def register_after_commit(hook: Callable[[Event], None]) -> None:
    if hook not in _after_commit_hooks:
        _after_commit_hooks.append(hook)


def emit(*, tenant: Tenant | Any, type: EventType | str, payload: dict[str, Any]) -> Event:
    """Write the Event row in the caller's transaction; dispatch it after that transaction commits.

    Every change on the platform calls this, so the row is written with one prepared-once INSERT
    rather than through Model.save() (whose per-field preparation cost more than the statement).
    """
    event = event_row(tenant=tenant, type=type, payload=payload)
    sql, params = insert_sql([event])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted([event], cursor.fetchall())
    return event


def event_row(*, tenant: Tenant | Any, type: EventType | str, payload: dict[str, Any]) -> Event:
    """The Event ``emit`` would write, not written yet: for a caller that writes it with its own
    statement (``insert_sql`` as a data-modifying CTE), then calls ``inserted``."""
    return Event(
        tenant_id=getattr(tenant, "pk", tenant),
        event_id=uuid.uuid4(),
        type=EventType(type).value,
        payload=payload,
        correlation_id=get_correlation_id() or "",
        created_at=timezone.now(),
        dispatch_pending=True,
        publish_pending=bool(settings.RABBITMQ_URL),
    )


def insert_sql(events: list[Event]) -> tuple[str, list[Any]]:
    """One INSERT of these rows ``RETURNING id, event_id``, and its parameters."""
    params: list[Any] = []
    for event in events:
        params += _row_params(event)
    return queries.event_insert(len(events)), params


def _row_params(event: Event) -> list[Any]:
    """An event row's values, in the column order of ``queries.event_insert``."""
    return [
        event.tenant_id,
        event.event_id,
        event.type,
        json.dumps(event.payload),
        event.correlation_id,
        event.created_at,
        event.dispatch_pending,
        event.publish_pending,
    ]


def inserted(events: list[Event], returned: Iterable[tuple[int, uuid.UUID]]) -> None:
    """The rows of ``insert_sql`` are written (``returned``: what it returned): each is dispatched after
    the commit."""
    ids = {str(event_id): pk for pk, event_id in returned}
    for event in events:
        event.pk = ids[str(event.event_id)]
        event._state.adding = False
        event._state.db = connection.alias
        if _after_commit_hooks:
            transaction.on_commit(functools.partial(_dispatch, event), robust=True)


def insert_per_row_sql(
    events: list[Event], keys: list[str], *, rows: str, key: str, id_as: str
) -> tuple[str, list[Any]]:
    """One INSERT of these events for a statement that writes rows first (a data-modifying CTE named
    ``rows``, with an ``id`` and a ``key`` column): ``events[i]`` is written for the row whose ``key``
    is ``keys[i]``, with that row's id in its payload as ``id_as`` (which the payload must hold, as None,
    where it should stand). ``RETURNING id, event_id``; then ``inserted``."""
    params: list[Any] = [id_as]
    for event, value in zip(events, keys, strict=True):
        params += [*_row_params(event), value]
    return queries.event_insert_per_row(len(events), rows=rows, key=key), params


def _dispatch(event: Event) -> None:
    for hook in list(_after_commit_hooks):
        try:
            hook(event)
        except Exception:
            # A failing subscriber never breaks the emitter; delivery is retried from the outbox.
            logger.exception("event hook failed", extra={"event_id": str(event.event_id), "hook": repr(hook)})


# --- tenant webhook endpoints -------------------------------------------------------------------------


class WebhookError(Exception):
    """A refused webhook operation: ``code`` for the API, ``fields`` for field-level details."""

    def __init__(self, code: str, message: str, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or {}


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_RESERVED_HEADERS = {
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-request-id",  # the event's correlation id (events.delivery)
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
}


def _validate_url(url: str) -> str:
    try:
        egress.check_url(url)
    except egress.EgressRefused as exc:
        raise WebhookError("validation_error", "Invalid webhook URL.", {"url": [str(exc)]}) from None
    return url


def _validate_event_types(event_types: Iterable[str]) -> list[str]:
    values = list(dict.fromkeys(event_types))
    unknown = [t for t in values if t not in EventType.values]
    if unknown:
        raise WebhookError(
            "validation_error", "Unknown event type.", {"event_types": [f"unknown: {', '.join(unknown)}"]}
        )
    return values


def _validate_headers(headers: dict[str, str]) -> dict[str, str]:
    errors: list[str] = []
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            errors.append(f"'{name[:64]}' is not a valid header name")
        elif name.lower() in _RESERVED_HEADERS:
            errors.append(f"'{name}' is set by the platform and cannot be overridden")
        elif not isinstance(value, str) or len(value) > 4096 or "\r" in value or "\n" in value:
            errors.append(f"the value of '{name}' must be text of at most 4096 characters on one line")
    if len(headers) > 20:
        errors.append("at most 20 custom headers")
    if errors:
        raise WebhookError("validation_error", "Invalid custom headers.", {"headers": errors})
    return headers


def _store_headers(*, tenant: Tenant, endpoint: WebhookEndpoint, headers: dict[str, str]) -> None:
    if headers:
        secret_store.tenant_secret_set(tenant=tenant, name=endpoint.headers_secret_name, value=json.dumps(headers))
    else:
        secret_store.tenant_secret_delete(tenant=tenant, name=endpoint.headers_secret_name)
    endpoint.header_names = sorted(headers)


@dataclass(repr=False)
class EndpointWithSecret:
    """An endpoint and its signing secret, returned once (creation, rotation) and never stored in clear."""

    endpoint: WebhookEndpoint
    secret: str

    def __repr__(self) -> str:
        return f"<EndpointWithSecret {self.endpoint.pk}>"


def webhook_endpoint_create(
    *,
    tenant: Tenant,
    url: str,
    event_types: Iterable[str] = (),
    description: str = "",
    headers: dict[str, str] | None = None,
    is_active: bool = True,
) -> EndpointWithSecret:
    endpoint = WebhookEndpoint(
        tenant=tenant,
        url=_validate_url(url),
        event_types=_validate_event_types(event_types),
        description=description,
        is_active=is_active,
    )
    headers = _validate_headers(headers or {})
    secret = signing.generate_secret()
    with transaction.atomic():
        endpoint.save()
        secret_store.tenant_secret_set(tenant=tenant, name=endpoint.signing_secret_name, value=secret)
        _store_headers(tenant=tenant, endpoint=endpoint, headers=headers)
        endpoint.save(update_fields=["header_names"])
    return EndpointWithSecret(endpoint=endpoint, secret=secret)


_UNSET: Any = object()


def webhook_endpoint_update(
    *,
    tenant: Tenant,
    endpoint: WebhookEndpoint,
    url: str = _UNSET,
    event_types: Iterable[str] = _UNSET,
    description: str = _UNSET,
    headers: dict[str, str] | None = _UNSET,
    is_active: bool = _UNSET,
) -> WebhookEndpoint:
    """Change what is given. ``headers`` replaces the whole set; ``is_active=True`` re-enables an
    endpoint (also one disabled automatically) and forgets its failure streak."""
    assert endpoint.tenant_id == tenant.pk
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.for_tenant(tenant).select_for_update().get(pk=endpoint.pk)
        if url is not _UNSET:
            endpoint.url = _validate_url(url)
        if event_types is not _UNSET:
            endpoint.event_types = _validate_event_types(event_types)
        if description is not _UNSET:
            endpoint.description = description
        if headers is not _UNSET:
            _store_headers(tenant=tenant, endpoint=endpoint, headers=_validate_headers(headers or {}))
        if is_active is not _UNSET and is_active != endpoint.is_active:
            endpoint.is_active = is_active
            if is_active:
                endpoint.disabled_at = None
                endpoint.disabled_reason = ""
                endpoint.failing_since = None
            else:
                endpoint.disabled_at = timezone.now()
                endpoint.disabled_reason = "disabled by the tenant"
        endpoint.save()
    if is_active is True:
        from events import outbox

        # Deliveries paused while it was disabled resume now.
        transaction.on_commit(lambda: outbox.kick_endpoint(endpoint.pk))
    return endpoint


def webhook_endpoint_delete(*, tenant: Tenant, endpoint: WebhookEndpoint) -> None:
    with transaction.atomic():
        for name in (endpoint.signing_secret_name, endpoint.previous_secret_name, endpoint.headers_secret_name):
            secret_store.tenant_secret_delete(tenant=tenant, name=name)
        WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).delete()


def webhook_secret_rotate(*, tenant: Tenant, endpoint: WebhookEndpoint, now: datetime | None = None) -> str:
    """A new signing secret, returned once. The old one keeps signing (as a second signature) for
    WEBHOOK_SECRET_ROTATION_GRACE_HOURS so receivers can switch without dropping requests."""
    now = now or timezone.now()
    secret = signing.generate_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.for_tenant(tenant).select_for_update().get(pk=endpoint.pk)
        secret_store.with_tenant_secret(
            tenant=tenant,
            name=endpoint.signing_secret_name,
            fn=lambda old: secret_store.tenant_secret_set(tenant=tenant, name=endpoint.previous_secret_name, value=old),
        )
        secret_store.tenant_secret_set(tenant=tenant, name=endpoint.signing_secret_name, value=secret)
        endpoint.secret_rotated_at = now
        endpoint.previous_secret_expires_at = now + timedelta(hours=settings.WEBHOOK_SECRET_ROTATION_GRACE_HOURS)
        endpoint.save(update_fields=["secret_rotated_at", "previous_secret_expires_at", "updated_at"])
    return secret


def webhook_deliveries_replay(
    *,
    tenant: Tenant,
    endpoint: WebhookEndpoint | None = None,
    delivery_ids: Iterable[int] | None = None,
    since: datetime | None = None,
    now: datetime | None = None,
) -> int:
    """Put dead deliveries back on a fresh retry schedule (same ``webhook-id``); return how many.

    Refused for a disabled endpoint: re-enable it first, or the replay would die again at once.
    """
    from events import outbox

    now = now or timezone.now()
    if endpoint is not None and not endpoint.is_active:
        raise WebhookError("endpoint_disabled", "The endpoint is disabled; re-enable it before replaying.")
    queryset = WebhookDelivery.objects.for_tenant(tenant).filter(
        status=WebhookDelivery.Status.DEAD, endpoint__is_active=True
    )
    if endpoint is not None:
        queryset = queryset.filter(endpoint=endpoint)
    if delivery_ids is not None:
        queryset = queryset.filter(pk__in=list(delivery_ids))
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    with transaction.atomic():
        endpoint_ids = set(queryset.values_list("endpoint_id", flat=True).distinct())
        count = queryset.update(
            status=WebhookDelivery.Status.PENDING, attempt_count=0, next_attempt_at=now, completed_at=None
        )
    if count:
        logger.info("webhook deliveries replayed", extra={"tenant_id": str(tenant.pk), "count": count})
        transaction.on_commit(lambda: outbox.kick_endpoints(endpoint_ids))
    return count


def webhook_delivery_replay(*, tenant: Tenant, delivery: WebhookDelivery, now: datetime | None = None) -> None:
    if delivery.status != WebhookDelivery.Status.DEAD:
        raise WebhookError("not_dead", f"Only dead deliveries can be replayed (this one is {delivery.status}).")
    endpoint = WebhookEndpoint.objects.for_tenant(tenant).get(pk=delivery.endpoint_id)
    webhook_deliveries_replay(tenant=tenant, endpoint=endpoint, delivery_ids=[delivery.pk], now=now)
