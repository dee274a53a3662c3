"""Tenant webhook delivery: events → deliveries → signed attempts, retries, dead-lettering, auto-disable.

1. ``dispatch_pending_events`` turns committed events (``dispatch_pending``) into one
   ``WebhookDelivery`` per subscribed active endpoint, in batches, and kicks those endpoints.
2. ``deliver_due`` (task ``events.deliver_endpoint``, queue ``webhooks``) drains one endpoint: it
   *claims* due deliveries (moves ``next_attempt_at`` forward as a lease, so a crashed worker's claim
   simply expires), sends them over one kept-alive connection, then records every attempt in one
   transaction. A timeout or connection failure ends the drain at once (the rest are released), so a
   hanging receiver holds at most one worker thread while other endpoints keep flowing.
3. A failed attempt is retried after ``WEBHOOK_RETRY_SCHEDULE[n]`` (± jitter); after the last one the
   delivery is dead and ``webhook.delivery_dead`` is emitted. When every attempt to an endpoint has
   failed for ``WEBHOOK_DISABLE_AFTER_HOURS``, the endpoint is disabled and
   ``webhook.endpoint_disabled`` is emitted; its pending deliveries wait until it is re-enabled.

Every function takes ``now`` so tests drive the schedule with their own clock; ``clock`` is what the
tasks use when no ``now`` is given.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from urllib3.exceptions import NameResolutionError

from config import metrics
from events import outbox, signing, transport
from events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from events.services import emit
from events.types import EventType
from tenants import secrets as secret_store

logger = logging.getLogger(__name__)

clock: Callable[[], datetime] = timezone.now
# Retries due within this many seconds also get a Celery countdown, for punctuality; later ones are
# found by the beat sweep (long countdowns would sit in worker memory, past the broker's visibility).
COUNTDOWN_MAX_SECONDS = 120


def retry_delay(attempts_made: int, *, rng: random.Random | None = None) -> timedelta | None:
    """Delay before the next attempt after ``attempts_made`` failed ones; None when the schedule is over."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    base = float(schedule[attempts_made - 1])
    spread = base * settings.WEBHOOK_RETRY_JITTER
    return timedelta(seconds=base + (rng or random).uniform(-spread, spread))


# --- fan-out ------------------------------------------------------------------------------------------


def dispatch_pending_events(*, batch_size: int = 500, now: datetime | None = None) -> int:
    """Create deliveries for one batch of undispatched events; return how many events it handled.

    Concurrent callers take disjoint batches (SKIP LOCKED); the unique (endpoint, event) constraint
    makes a repeated batch harmless.
    """
    now = now or clock()
    endpoint_ids: set[Any] = set()
    with transaction.atomic():
        events = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(dispatch_pending=True)
            .order_by("id")
            .only("id", "tenant_id", "type", "payload")[:batch_size]
        )
        if not events:
            return 0
        endpoints: dict[Any, list[WebhookEndpoint]] = {}
        for endpoint in WebhookEndpoint.objects.for_tenants({e.tenant_id for e in events}).filter(is_active=True):
            endpoints.setdefault(endpoint.tenant_id, []).append(endpoint)
        deliveries = []
        for event in events:
            for endpoint in endpoints.get(event.tenant_id, ()):
                if endpoint.accepts(event):
                    deliveries.append(
                        WebhookDelivery(
                            tenant_id=event.tenant_id, endpoint=endpoint, event_id=event.pk, next_attempt_at=now
                        )
                    )
                    endpoint_ids.add(endpoint.pk)
        WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True, batch_size=1000)
        Event.objects.filter(pk__in=[e.pk for e in events]).update(dispatch_pending=False)
        transaction.on_commit(lambda: [outbox.kick_endpoint(endpoint_id) for endpoint_id in endpoint_ids])
    return len(events)


# --- one endpoint's drain -------------------------------------------------------------------------------


@dataclass
class AttemptResult:
    delivery: WebhookDelivery
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    response_excerpt: str = ""
    error: str = ""
    # The receiver could not be reached or did not answer in time: stop draining this endpoint.
    unreachable: bool = False

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class DrainReport:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    disabled: bool = False
    more: bool = False
    results: list[AttemptResult] = field(default_factory=list, repr=False)


def deliver_due(
    *, endpoint_id: Any, now: datetime | None = None, batch_size: int | None = None, time_budget: float = 20.0
) -> DrainReport:
    """Send this endpoint's due deliveries, batch after batch, until none is due, the receiver is
    unreachable, or ``time_budget`` seconds have passed (then ``more`` is set: kick again)."""
    report = DrainReport()
    started = time.monotonic()
    endpoint = WebhookEndpoint.objects.select_related("tenant").filter(pk=endpoint_id).first()
    if endpoint is None or not endpoint.is_active:
        return report
    batch_size = batch_size or settings.WEBHOOK_CLAIM_BATCH
    # Decrypted once per drain (at most time_budget seconds), only if something is due.
    secrets: list[str] = []
    headers: dict[str, str] = {}
    try:
        while True:
            claimed = _claim(endpoint=endpoint, now=now or clock(), limit=batch_size)
            if not claimed:
                return report
            try:
                if not secrets:
                    secrets = _signing_secrets(endpoint, now or clock())
                    headers = _custom_headers(endpoint)
                results, released = _send_batch(
                    endpoint=endpoint, deliveries=claimed, secrets=secrets, headers=headers, now=now
                )
            except secret_store.SecretError as exc:
                # Without its secrets the endpoint cannot be signed for: a failed attempt, visible as such.
                failed = AttemptResult(
                    delivery=claimed[0], started_at=now or clock(), duration_ms=0, error=str(exc), unreachable=True
                )
                results, released = [failed], _release(claimed[1:], now=now or clock())
            report.results += results
            report.released += released
            _record(endpoint=endpoint, results=results, now=now or clock(), report=report)
            if report.disabled or any(r.unreachable for r in results):
                return report
            if time.monotonic() - started > time_budget:
                report.more = True
                return report
    finally:
        # The plaintext lived in these Python strings only for this drain (see tenants.secrets).
        secrets.clear()
        headers.clear()


def _claim(*, endpoint: WebhookEndpoint, now: datetime, limit: int) -> list[WebhookDelivery]:
    """Lease up to ``limit`` due deliveries (one statement; concurrent drains skip each other's rows).
    Nothing is claimed once the endpoint is disabled."""
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    lease_until = now + timedelta(seconds=limit * (timeout + 1) + 60)
    table = WebhookDelivery._meta.db_table
    endpoints = WebhookEndpoint._meta.db_table
    sql = (
        f"UPDATE {table} SET next_attempt_at = %s WHERE id IN ("  # noqa: S608 (our tables)
        f"SELECT id FROM {table} WHERE tenant_id = %s AND endpoint_id = %s AND status = 'pending' "
        "AND next_attempt_at <= %s "
        f"AND EXISTS (SELECT 1 FROM {endpoints} WHERE id = %s AND is_active) "
        "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [lease_until, endpoint.tenant_id, endpoint.pk, now, endpoint.pk, limit])
        ids = sorted(row[0] for row in cursor.fetchall())
    if not ids:
        return []
    deliveries = {d.pk: d for d in WebhookDelivery.objects.filter(pk__in=ids).select_related("event")}
    return [deliveries[i] for i in ids if i in deliveries]


def _release(deliveries: list[WebhookDelivery], *, now: datetime) -> int:
    """Give claimed, unsent deliveries back (due now) instead of waiting for their lease to expire."""
    if deliveries:
        WebhookDelivery.objects.filter(pk__in=[d.pk for d in deliveries], status=WebhookDelivery.Status.PENDING).update(
            next_attempt_at=now
        )
    return len(deliveries)


def _signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    names = [endpoint.signing_secret_name]
    if endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        names.append(endpoint.previous_secret_name)
    values: list[str] = []
    for name in names:
        try:
            secret_store.with_tenant_secret(tenant=endpoint.tenant, name=name, fn=values.append)
        except secret_store.SecretNotFound:
            if name == endpoint.signing_secret_name:
                raise
    return values


def _custom_headers(endpoint: WebhookEndpoint) -> dict[str, str]:
    if not endpoint.header_names:
        return {}
    return secret_store.with_tenant_secret(tenant=endpoint.tenant, name=endpoint.headers_secret_name, fn=json.loads)


def _send_batch(
    *,
    endpoint: WebhookEndpoint,
    deliveries: list[WebhookDelivery],
    secrets: list[str],
    headers: dict[str, str],
    now: datetime | None,
) -> tuple[list[AttemptResult], int]:
    """Send each claimed delivery; stop at the first unreachable answer and release the rest."""
    results: list[AttemptResult] = []
    for delivery in deliveries:
        result = _attempt(endpoint=endpoint, delivery=delivery, secrets=secrets, headers=headers, now=now)
        results.append(result)
        if result.unreachable:
            break
    return results, _release(deliveries[len(results) :], now=now or clock())


def _attempt(
    *,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    secrets: list[str],
    headers: dict[str, str],
    now: datetime | None,
) -> AttemptResult:
    event = delivery.event
    body = json.dumps(event.as_message(), separators=(",", ":"), ensure_ascii=False).encode()
    webhook_id = str(event.event_id)  # the same on every retry and replay: receivers dedupe on it
    timestamp = int(time.time())
    request_headers = {
        **headers,
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(
            secrets=secrets, webhook_id=webhook_id, timestamp=timestamp, body=body
        ),
    }
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    result = AttemptResult(delivery=delivery, started_at=now or clock(), duration_ms=0)
    started = time.perf_counter()
    try:
        response = transport.post(endpoint.url, body=body, headers=request_headers, timeout=timeout)
        result.status_code = response.status_code
        result.response_excerpt = response.content.decode("utf-8", "replace")[: settings.WEBHOOK_RESPONSE_EXCERPT_CHARS]
        if 300 <= response.status_code < 400:
            result.error = f"HTTP {response.status_code}: redirects are not followed"
        elif not result.success:
            result.error = f"HTTP {response.status_code}"
    except transport.DestinationRefused as exc:
        result.error, result.unreachable = str(exc), True
    except requests.Timeout:
        result.error, result.unreachable = f"no answer within {timeout:g} s", True
    except requests.ConnectionError as exc:
        result.error, result.unreachable = _connection_error(exc), True
    except requests.RequestException as exc:
        result.error = f"request failed: {type(exc).__name__}"
    result.duration_ms = int((time.perf_counter() - started) * 1000)
    return result


def _connection_error(exc: requests.ConnectionError) -> str:
    """A short reason without the URL (its path or query may carry a token)."""
    cause: Any = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    if isinstance(reason, NameResolutionError):
        return "connection failed: the host name does not resolve"
    text = str(reason or exc)
    for marker in ("Connection refused", "Connection reset", "timed out", "No route to host", "Network is unreachable"):
        if marker in text:
            return f"connection failed: {marker.lower()}"
    return f"connection failed: {type(reason).__name__}"


def _record(*, endpoint: WebhookEndpoint, results: list[AttemptResult], now: datetime, report: DrainReport) -> None:
    """Store the batch's attempts and new delivery states in one transaction; dead-letter, and track
    the endpoint's failure streak (auto-disable). A healthy batch costs three statements."""
    if not results:
        return
    attempts: list[WebhookAttempt] = []
    changed: list[WebhookDelivery] = []
    dead: list[WebhookDelivery] = []
    soon: list[float] = []
    for result in results:
        delivery = result.delivery
        attempts.append(
            WebhookAttempt(
                tenant_id=delivery.tenant_id,
                delivery=delivery,
                started_at=result.started_at,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                success=result.success,
                response_excerpt=result.response_excerpt,
                error=result.error[:500],
            )
        )
        report.sent += 1
        delivery.attempt_count += 1
        delivery.last_attempt_at = result.started_at
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error[:500]
        if result.success:
            report.succeeded += 1
            delivery.status, delivery.next_attempt_at, delivery.completed_at = "succeeded", None, now
        else:
            report.failed += 1
            delay = retry_delay(delivery.attempt_count)
            if delay is None:
                delivery.status, delivery.next_attempt_at, delivery.completed_at = "dead", None, now
                dead.append(delivery)
            else:
                delivery.next_attempt_at = now + delay
                soon.append(delay.total_seconds())
        changed.append(delivery)
    with transaction.atomic():
        # Only rows still pending change state (not one an admin or a deletion changed meanwhile);
        # every attempt is kept regardless.
        updated = _update_deliveries(changed)
        others = {d.pk for d in changed} - updated
        if others:  # rare: keep attempts of rows that still exist, skip those deleted with their endpoint
            existing = updated | set(WebhookDelivery.objects.filter(pk__in=others).values_list("pk", flat=True))
            attempts = [a for a in attempts if a.delivery_id in existing]
        WebhookAttempt.objects.bulk_create(attempts)
        dead = [d for d in dead if d.pk in updated]
        for delivery in dead:
            emit(
                tenant=delivery.tenant_id,
                type=EventType.WEBHOOK_DELIVERY_DEAD,
                payload={
                    "delivery_id": delivery.pk,
                    "endpoint_id": str(endpoint.pk),
                    "event_id": str(delivery.event.event_id),
                    "event_type": delivery.event.type,
                    "attempts": delivery.attempt_count,
                    "last_status_code": delivery.last_status_code,
                    "last_error": delivery.last_error,
                },
            )
        report.dead += len(dead)
        if all(r.success for r in results):
            _note_success(endpoint=endpoint, at=max(r.started_at for r in results))
        else:
            report.disabled = _note_failures(endpoint=endpoint, results=results, now=now)
    succeeded = sum(1 for r in results if r.success)
    if succeeded:
        metrics.incr("webhook_delivery_attempts_total", succeeded, outcome="success")
    if len(results) - succeeded:
        metrics.incr("webhook_delivery_attempts_total", len(results) - succeeded, outcome="failure")
    if dead:
        metrics.incr("webhook_deliveries_dead_total", len(dead))
        logger.warning("webhook deliveries dead", extra={"endpoint_id": str(endpoint.pk), "count": len(dead)})
    if soon and not report.disabled:
        _schedule_retry(endpoint.pk, min(soon))


def _note_success(*, endpoint: WebhookEndpoint, at: datetime) -> None:
    """End any failure streak; refresh last_success_at at most every 30 s (one cheap UPDATE that
    usually matches nothing, instead of a locked read-modify-write per batch)."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).filter(
        Q(failing_since__isnull=False)
        | Q(last_success_at__isnull=True)
        | Q(last_success_at__lt=at - timedelta(seconds=30))
    ).update(last_success_at=at, failing_since=None)


def _note_failures(*, endpoint: WebhookEndpoint, results: list[AttemptResult], now: datetime) -> bool:
    """Apply the batch to the endpoint's streak under a row lock; disable it after a sustained
    failure. Return whether the endpoint is now disabled (by this or anyone else)."""
    locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    for result in results:
        if result.success:
            locked.last_success_at, locked.failing_since = result.started_at, None
        else:
            locked.last_failure_at = result.started_at
            locked.failing_since = locked.failing_since or result.started_at
    disable_after = timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    if locked.is_active and locked.failing_since and now - locked.failing_since >= disable_after:
        _disable(endpoint=locked, now=now)
    locked.save(
        update_fields=[
            "last_success_at",
            "last_failure_at",
            "failing_since",
            "is_active",
            "disabled_at",
            "disabled_reason",
            "updated_at",
        ]
    )
    return not locked.is_active


def _update_deliveries(deliveries: list[WebhookDelivery]) -> set[int]:
    """One UPDATE ... FROM (VALUES ...) for the batch (bulk_update's CASE expressions cost more
    Python time than the HTTP requests themselves); returns the ids that were still pending."""
    if not deliveries:
        return set()
    table = WebhookDelivery._meta.db_table
    rows = ", ".join(
        ["(%s, %s, %s, %s::timestamptz, %s::timestamptz, %s::smallint, %s, %s::timestamptz)"] * len(deliveries)
    )
    params: list[Any] = []
    for d in deliveries:
        params += [
            d.pk,
            d.status,
            d.attempt_count,
            d.next_attempt_at,
            d.last_attempt_at,
            d.last_status_code,
            d.last_error,
            d.completed_at,
        ]
    sql = (
        f"UPDATE {table} AS d SET status = v.status, attempt_count = v.attempt_count, "  # noqa: S608 (our table)
        "next_attempt_at = v.next_attempt_at, last_attempt_at = v.last_attempt_at, "
        "last_status_code = v.last_status_code, last_error = v.last_error, completed_at = v.completed_at "
        f"FROM (VALUES {rows}) AS v(id, status, attempt_count, next_attempt_at, last_attempt_at, "
        "last_status_code, last_error, completed_at) WHERE d.id = v.id AND d.status = 'pending' RETURNING d.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _disable(*, endpoint: WebhookEndpoint, now: datetime) -> None:
    hours = (now - endpoint.failing_since).total_seconds() / 3600 if endpoint.failing_since else 0
    endpoint.is_active = False
    endpoint.disabled_at = now
    endpoint.disabled_reason = f"disabled automatically: every attempt failed for {hours:.1f} h"[:300]
    pending = WebhookDelivery.objects.for_tenant(endpoint.tenant_id).filter(
        endpoint=endpoint, status=WebhookDelivery.Status.PENDING
    )
    emit(
        tenant=endpoint.tenant_id,
        type=EventType.WEBHOOK_ENDPOINT_DISABLED,
        payload={
            "endpoint_id": str(endpoint.pk),
            "reason": endpoint.disabled_reason,
            "failing_since": endpoint.failing_since.isoformat() if endpoint.failing_since else None,
            "pending_deliveries": pending.count(),
        },
    )
    logger.warning("webhook endpoint disabled", extra={"endpoint_id": str(endpoint.pk), "hours": round(hours, 1)})


def _schedule_retry(endpoint_id: Any, seconds: float) -> None:
    if seconds > COUNTDOWN_MAX_SECONDS:
        return
    from config.celery import app

    def send() -> None:
        try:
            app.send_task(outbox.DELIVER_TASK, args=[str(endpoint_id)], countdown=max(0.0, seconds))
        except Exception as exc:
            logger.warning("could not schedule a webhook retry; the sweep will", extra={"error": str(exc)[:200]})

    transaction.on_commit(send)
