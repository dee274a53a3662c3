"""Tenant webhook delivery: events → deliveries → signed attempts, retries, dead-lettering, auto-disable.

1. ``dispatch_pending_events`` turns committed events (``dispatch_pending``) into one
   ``WebhookDelivery`` per subscribed active endpoint, in batches, and kicks those endpoints.
2. ``deliver_due`` (task ``events.deliver_endpoint``, queue ``webhooks``) drains one endpoint: it
   *claims* due deliveries (moves ``next_attempt_at`` forward as a lease, so a crashed worker's claim
   simply expires), sends them over one kept-alive connection, then records every attempt in one
   transaction. At most ``WEBHOOK_ENDPOINT_CONCURRENCY`` drains of an endpoint run at a time, one
   while it is failing (advisory locks), and a timeout or connection failure ends a drain at once
   (the rest are released), so a hanging receiver holds one worker thread once it has timed out,
   while other endpoints keep flowing.
3. A failed attempt is retried after ``WEBHOOK_RETRY_SCHEDULE[n]`` (± jitter); after the last one the
   delivery is dead and ``webhook.delivery_dead`` is emitted. When every attempt to an endpoint has
   failed for ``WEBHOOK_DISABLE_AFTER_HOURS``, the endpoint is disabled and
   ``webhook.endpoint_disabled`` is emitted; its pending deliveries wait until it is re-enabled.

Every function takes ``now`` so tests drive the schedule with their own clock; ``clock`` is what the
tasks use when no ``now`` is given.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import JSONField
from django.utils import timezone

from config import egress, metrics
from config.logs import HTTP_HEADER, correlation_id
from events import outbox, queries, signing, transport
from events.models import WebhookDelivery, WebhookEndpoint, message_body
from events.services import emit
from events.types import EventType
from tenants import secrets as secret_store
from tenants.models import Tenant

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


# A fan-out that had to skip locked pending events looks again this many times, this far apart.
SKIPPED_ROW_RETRIES = 10
SKIPPED_ROW_PAUSE_SECONDS = 0.02


def dispatch_pending_events(*, batch_size: int = 500, now: datetime | None = None) -> int:
    """Create deliveries for one batch of undispatched events; return how many events it handled.

    One statement: lock a batch of pending events (SKIP LOCKED: concurrent callers take disjoint
    batches), insert one delivery per subscribed active endpoint (the unique (endpoint, event)
    constraint makes a repeated batch harmless), and clear the events' flag; again after a pause
    while it skipped pending events that another transaction held. An endpoint takes the
    event types it lists (none listed: all), and never a ``webhook.*`` event about itself: a dead
    receiver must not be sent news of its own failures (which would fail, and so on).
    """
    now = now or clock()
    handled_total, retries = 0, 0
    while True:
        with connection.cursor() as cursor:  # one statement: atomic without a transaction block
            cursor.execute(queries.DISPATCH_PENDING_EVENTS, [batch_size, now, timezone.now()])
            handled, endpoint_ids, skipped = cursor.fetchone()
        handled_total += handled
        if endpoint_ids:
            transaction.on_commit(functools.partial(outbox.kick_endpoints, endpoint_ids))
        # A pending event this statement skipped was locked by another transaction: the publisher
        # marking it published (for an instant), another fan-out (which sees to it), or a long one
        # such as a tenant's deletion (not waited for: the fan-out of every tenant would stall). The
        # kick that brought this task is spent, so look again shortly rather than leave it to the sweep.
        if handled >= batch_size or not skipped or retries == SKIPPED_ROW_RETRIES:
            return handled_total
        retries += 1
        time.sleep(SKIPPED_ROW_PAUSE_SECONDS)


# --- one endpoint's drain -------------------------------------------------------------------------------


@dataclass(slots=True)
class ClaimedDelivery:
    """A leased delivery with what sending and recording it needs, read in the claiming statement
    (no model instances on the hot path). The fields after ``body`` are its new state once sent."""

    pk: int
    tenant_id: UUID
    attempt_count: int
    event_id: UUID  # the webhook-id
    event_type: str
    body: bytes
    correlation_id: str = ""  # the event's: sent as X-Request-ID, ties the call to what caused it
    status: str = "pending"
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str = ""
    completed_at: datetime | None = None


@dataclass
class AttemptResult:
    delivery: ClaimedDelivery
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
    busy: bool = False  # the endpoint's drains were all running: this one sent nothing
    results: list[AttemptResult] = field(default_factory=list, repr=False)


def deliver_due(
    *, endpoint_id: UUID | str, now: datetime | None = None, batch_size: int | None = None, time_budget: float = 20.0
) -> DrainReport:
    """Send this endpoint's due deliveries, batch after batch, until none is due, the receiver is
    unreachable, or ``time_budget`` seconds have passed (then ``more`` is set: kick again)."""
    report = DrainReport()
    endpoint, slot = _load_endpoint_taking_a_slot(endpoint_id)
    if endpoint is None or not endpoint.is_active:
        return report
    if slot is None:
        # As many drains of this endpoint as it may have are running: they look for due deliveries
        # when they end.
        report.busy = True
        return report
    try:
        _drain(endpoint, report, now=now, batch_size=batch_size or settings.WEBHOOK_CLAIM_BATCH, budget=time_budget)
    finally:
        _unlock_drain(endpoint.pk, slot)
    ended_early = report.more or report.disabled or any(r.unreachable for r in report.results)
    if not ended_early and _anything_due(endpoint, now or clock()):
        # Deliveries whose drain found every slot taken (and left): drain them now, from the back of
        # the queue. After an unreachable answer the sweep comes back to them instead (≤ 5 s).
        outbox.kick_endpoint(endpoint.pk)
    return report


def _drain(
    endpoint: WebhookEndpoint, report: DrainReport, *, now: datetime | None, batch_size: int, budget: float
) -> None:
    started = time.monotonic()
    # Decrypted once per drain (at most time_budget seconds), only if something is due.
    secrets: list[str] = []
    headers: dict[str, str] = {}
    try:
        while True:
            claimed = _claim(endpoint=endpoint, now=now or clock(), limit=batch_size)
            if not claimed:
                return
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
                return
            if len(claimed) < batch_size:
                # Everything due was in this batch. Deliveries created since then kicked a new drain
                # (the task cleared its flag first); if it found no free slot, see deliver_due.
                return
            if time.monotonic() - started > budget:
                report.more = True
                return
    finally:
        # The plaintext lived in these Python strings only for this drain (see tenants.secrets).
        secrets.clear()
        headers.clear()


# Concurrent drains per endpoint: at most WEBHOOK_ENDPOINT_CONCURRENCY (one while it is failing), each
# holding a session advisory lock on its slot; why, in events.queries above _DRAIN_LOCK_KEY.
def _load_endpoint_taking_a_slot(endpoint_id: UUID | str) -> tuple[WebhookEndpoint | None, int | None]:
    """The endpoint, and the drain slot taken for it (None: none free, or the endpoint is inactive),
    read with a fixed raw statement: a drain starts for every few deliveries, and compiling the ORM
    query (with its tenant join) cost as much as sending them."""
    fields = WebhookEndpoint._meta.concrete_fields
    params: list[int | str] = [max(1, settings.WEBHOOK_ENDPOINT_CONCURRENCY), str(endpoint_id)]
    with connection.cursor() as cursor:
        cursor.execute(queries.endpoint_taking_a_slot(), params)
        row = cursor.fetchone()
    if row is None:
        return None, None
    # jsonb arrives as text (Django's loader); the ORM would decode it in JSONField.from_db_value.
    values = [
        json.loads(value) if isinstance(field, JSONField) and value is not None else value
        for field, value in zip(fields, row[:-1], strict=True)
    ]
    endpoint = WebhookEndpoint.from_db(connection.alias, [f.attname for f in fields], values)
    # The secrets are looked up by tenant id only: a Tenant carrying its id, not a second query.
    endpoint.tenant = Tenant(pk=endpoint.tenant_id)
    return endpoint, row[-1]


def _unlock_drain(endpoint_id: UUID, slot: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(queries.DRAIN_UNLOCK, [str(endpoint_id), str(slot)])
    except DatabaseError:
        # The session is broken (the drain may have failed on it): closing it lets go of the lock,
        # and the drain's own error, if any, is the one that propagates.
        logger.warning(
            "could not release a drain lock; closing the connection", extra={"endpoint_id": str(endpoint_id)}
        )
        connection.close()


def _anything_due(endpoint: WebhookEndpoint, now: datetime) -> bool:
    """Whether a delivery of this endpoint is due (read after the drain lock was let go; a fixed
    statement, as the claim's: at a steady trickle of events every drain ends with it)."""
    with connection.cursor() as cursor:
        cursor.execute(queries.DELIVERY_DUE_EXISTS, [endpoint.tenant_id, endpoint.pk, now])
        return bool(cursor.fetchone()[0])


def _claim(*, endpoint: WebhookEndpoint, now: datetime, limit: int) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries and read their events (one statement; concurrent drains
    skip each other's rows). Nothing is claimed once the endpoint is disabled."""
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    lease_until = now + timedelta(seconds=limit * (timeout + 1) + 60)
    with connection.cursor() as cursor:
        cursor.execute(
            queries.DELIVERIES_CLAIM, [endpoint.tenant_id, endpoint.pk, now, endpoint.pk, limit, lease_until]
        )
        rows = sorted(cursor.fetchall())
    return [
        ClaimedDelivery(
            pk=pk,
            tenant_id=tenant_id,
            attempt_count=attempts,
            event_id=event_id,
            event_type=event_type,
            body=message_body(
                event_id=event_id,
                type=event_type,
                tenant_id=event_tenant_id,
                created_at=created_at,
                payload_json=payload,
            ),
            correlation_id=cid,
        )
        for pk, tenant_id, attempts, event_id, event_type, event_tenant_id, created_at, payload, cid in rows
    ]


def _release(deliveries: list[ClaimedDelivery], *, now: datetime) -> int:
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
    deliveries: list[ClaimedDelivery],
    secrets: list[str],
    headers: dict[str, str],
    now: datetime | None,
) -> tuple[list[AttemptResult], int]:
    """Send each claimed delivery over this thread's kept-alive connection to the receiver; stop at
    the first unreachable answer and release the rest."""
    results: list[AttemptResult] = []
    keys = [signing.secret_key(secret) for secret in secrets]
    try:
        receiver, target = transport.webhook_connection(endpoint.url)
    except egress.EgressRefused as exc:
        failed = AttemptResult(
            delivery=deliveries[0], started_at=now or clock(), duration_ms=0, error=str(exc), unreachable=True
        )
        return [failed], _release(deliveries[1:], now=now or clock())
    for delivery in deliveries:
        result = _attempt(receiver=receiver, target=target, delivery=delivery, keys=keys, headers=headers, now=now)
        results.append(result)
        if result.unreachable:
            break
    return results, _release(deliveries[len(results) :], now=now or clock())


def _attempt(
    *,
    receiver: transport.WebhookReceiver,
    target: str,
    delivery: ClaimedDelivery,
    keys: list[bytes],
    headers: dict[str, str],
    now: datetime | None,
) -> AttemptResult:
    body = delivery.body
    webhook_id = str(delivery.event_id)  # the same on every retry and replay: receivers dedupe on it
    timestamp = int(time.time())
    request_headers = {
        **headers,
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header_for_keys(
            keys=keys, webhook_id=webhook_id, timestamp=timestamp, body=body
        ),
    }
    if delivery.correlation_id:
        request_headers[HTTP_HEADER] = delivery.correlation_id
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    result = AttemptResult(delivery=delivery, started_at=now or clock(), duration_ms=0)
    started = time.perf_counter()
    try:
        answer = receiver.post(target, body=body, headers=request_headers, timeout=timeout)
        result.status_code = answer.status_code
        result.response_excerpt = answer.content[: settings.WEBHOOK_RESPONSE_EXCERPT_CHARS * 4].decode(
            "utf-8", "replace"
        )[: settings.WEBHOOK_RESPONSE_EXCERPT_CHARS]
        if 300 <= answer.status_code < 400:
            result.error = f"HTTP {answer.status_code}: redirects are not followed"
        elif not result.success:
            result.error = f"HTTP {answer.status_code}"
    except egress.EgressRefused as exc:
        result.error, result.unreachable = str(exc), True
    except transport.WebhookTimeout:
        result.error, result.unreachable = f"no answer within {timeout:g} s", True
    except transport.WebhookConnectionError as exc:
        result.error, result.unreachable = exc.reason, True
    except transport.WebhookProtocolError as exc:
        result.error = f"request failed: {exc}"
    result.duration_ms = int((time.perf_counter() - started) * 1000)
    return result


def _record(*, endpoint: WebhookEndpoint, results: list[AttemptResult], now: datetime, report: DrainReport) -> None:
    """Store the batch's attempts and new delivery states; dead-letter, and track the endpoint's
    failure streak (auto-disable). A healthy batch is one statement; one with failures is a
    transaction that also dead-letters and updates the streak under the endpoint's row lock."""
    if not results:
        return
    dead: list[ClaimedDelivery] = []
    soon: list[float] = []
    for result in results:
        delivery = result.delivery
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
    if report.failed == 0 and not dead and all(r.success for r in results):
        # The common case, one statement (atomic by itself): attempts, deliveries, and the end of any
        # failure streak.
        _store(results, success_endpoint=endpoint, success_at=max(r.started_at for r in results))
    else:
        with transaction.atomic():
            updated = _store(results)
            dead = [d for d in dead if d.pk in updated]
            for delivery in dead:
                # Tied to what caused the dead event, not to the drain that gave up on it.
                token = correlation_id.set(delivery.correlation_id or correlation_id.get())
                try:
                    emit(
                        tenant=delivery.tenant_id,
                        type=EventType.WEBHOOK_DELIVERY_DEAD,
                        payload={
                            "delivery_id": delivery.pk,
                            "endpoint_id": str(endpoint.pk),
                            "event_id": str(delivery.event_id),
                            "event_type": delivery.event_type,
                            "attempts": delivery.attempt_count,
                            "last_status_code": delivery.last_status_code,
                            "last_error": delivery.last_error,
                        },
                    )
                finally:
                    correlation_id.reset(token)
            report.dead += len(dead)
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


def _store(
    results: list[AttemptResult], *, success_endpoint: WebhookEndpoint | None = None, success_at: datetime | None = None
) -> set[int]:
    """Store a batch in one statement, its rows as arrays (a fixed statement text, parsed once): the
    new state of every delivery still pending (not one an admin or a deletion changed meanwhile),
    every attempt of a delivery that still exists, and, with ``success_endpoint``, the end of that
    endpoint's failure streak (``last_success_at`` refreshed at most every 30 s, so the UPDATE usually
    matches nothing). Returns the ids of the deliveries updated."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for result in results:
        d = result.delivery
        row = (
            d.pk,
            d.tenant_id,
            d.status,
            d.attempt_count,
            d.next_attempt_at,
            d.last_attempt_at,
            d.last_status_code,
            d.last_error,
            d.completed_at,
            result.duration_ms,
            result.success,
            result.response_excerpt,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    endpoint_pk = success_endpoint.pk if success_endpoint is not None else None
    streak_after = success_at - timedelta(seconds=30) if success_at is not None else None
    with connection.cursor() as cursor:
        cursor.execute(queries.attempts_store(), [*columns, success_at, endpoint_pk, streak_after])
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


def _schedule_retry(endpoint_id: UUID | str, seconds: float) -> None:
    if seconds > COUNTDOWN_MAX_SECONDS:
        return
    from config.celery import app

    def send() -> None:
        try:
            app.send_task(outbox.DELIVER_TASK, args=[str(endpoint_id)], countdown=max(0.0, seconds))
        except Exception as exc:
            logger.warning("could not schedule a webhook retry; the sweep will", extra={"error": str(exc)[:200]})

    transaction.on_commit(send)
