"""RabbitMQ publishing from the Event outbox, with publisher confirms, in order per tenant.

Each batch runs under a PostgreSQL advisory lock, so one publisher at a time walks the pending
events in id order: a tenant's events reach the exchange in the order they were written (events of
concurrent transactions are ordered by id). Only a message the broker confirmed is marked published;
on any failure the confirmed prefix is marked, the rest stay pending for the next run, and the
failure is remembered for /api/health. Delivery is at least once: consumers dedupe on ``id``.

Exchange: ``EVENTS_EXCHANGE`` (topic, durable). Routing key: ``tenant.<tenant_id>.<event_type>``.
Messages: persistent (delivery_mode 2), JSON ``{id, type, tenant_id, created_at, payload}``,
``message_id`` = event id, ``content_type`` application/json.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import kombu
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from config import metrics
from events import queries
from events.models import Event, message_body

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "events publisher" (any constant; unique within this database).
ADVISORY_LOCK_KEY = 0x6D63_6576_7075_62  # "mcevpub"
STATE_CACHE_KEY = "events:publisher:state"


PERSISTENT = 2  # AMQP delivery_mode: the broker writes the message to disk


class BrokerUnavailable(Exception):
    pass


@dataclass
class PublishReport:
    published: int = 0
    pending: bool = False  # events were left pending (broker failure or time budget)
    error: str = ""


def routing_key(event: Event) -> str:
    return f"tenant.{event.tenant_id}.{event.type}"


class _Connection:
    """One AMQP connection per process (kombu over py-amqp), reused across runs; not thread-safe,
    hence the lock.

    Publisher confirms are collected per batch, not per message: the batch is written at once and
    the broker's (possibly ``multiple``) Basic.Ack frames are awaited together, so throughput does
    not depend on the round-trip time to the broker. py-amqp's channel reports acks and nacks to the
    callbacks in ``channel.events`` while the connection drains its frames.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rerun = False
        self.url = ""
        self.connection: kombu.Connection | None = None
        self.channel: Any = None
        self.exchange = ""
        self.next_tag = 0
        self.unconfirmed: set[int] = set()
        self.nacked: set[int] = set()

    def channel_for(self, url: str, exchange: str) -> Any:
        if self.connection is not None and (self.url != url or not self.connection.connected):
            self.close()
        if self.connection is None:
            connection = kombu.Connection(
                url,
                connect_timeout=settings.EVENTS_PUBLISH_CONNECT_TIMEOUT_SECONDS,
                heartbeat=0,
                # A broker (or a network) that stops answering mid-call fails the run instead of hanging it.
                transport_options={"read_timeout": 10.0, "write_timeout": 30.0},
            )
            try:
                connection.connect()
            except Exception as exc:
                connection.release()
                raise BrokerUnavailable(f"cannot connect to RabbitMQ: {type(exc).__name__}") from None
            self.connection, self.url, self.channel = connection, url, None
        if self.channel is None or not self.channel.is_open or self.exchange != exchange:
            self.channel = self.connection.channel()
            self.next_tag = 0
            self.unconfirmed.clear()
            self.nacked.clear()
            self.channel.confirm_select()
            self.channel.events["basic_ack"].add(self._on_ack)
            self.channel.events["basic_nack"].add(self._on_nack)
            self.channel.exchange_declare(exchange=exchange, type="topic", durable=True, auto_delete=False)
            self.exchange = exchange
        return self.channel

    def _confirmed(self, delivery_tag: int, multiple: bool) -> set[int]:
        tags = {t for t in self.unconfirmed if t <= delivery_tag} if multiple else {delivery_tag}
        self.unconfirmed -= tags
        return tags

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked |= self._confirmed(delivery_tag, multiple)

    def _wait(self, done: Any, *, timeout: float, what: str) -> None:
        assert self.connection is not None
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"RabbitMQ did not answer ({what}) within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=min(0.05, max(0.001, deadline - time.monotonic())))

    def publish_confirmed(self, messages: list[tuple[str, bytes, dict[str, Any]]], *, timeout: float = 30.0) -> int:
        """Publish (routing_key, body, properties) in order; return how many leading messages the
        broker confirmed (all of them, unless it nacked one or stopped answering)."""
        tags = []
        for routing_key, body, properties in messages:
            self.next_tag += 1
            self.unconfirmed.add(self.next_tag)
            tags.append(self.next_tag)
            message = self.channel.prepare_message(
                body, content_type=properties.pop("content_type"), properties=properties
            )
            self.channel.basic_publish(message, exchange=self.exchange, routing_key=routing_key)
        # Silence past the timeout: whatever was confirmed so far counts, the rest stays pending.
        with contextlib.suppress(BrokerUnavailable):
            self._wait(lambda: not self.unconfirmed or bool(self.nacked), timeout=timeout, what="publisher confirms")
        confirmed = 0
        for tag in tags:
            if tag in self.unconfirmed or tag in self.nacked:
                break
            confirmed += 1
        return confirmed

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.release()
        self.connection = self.channel = None


_shared = _Connection()


def publish_pending(*, batch_size: int | None = None, time_budget: float = 20.0) -> PublishReport:
    """Publish every pending event (batch after batch) until none is left, the broker fails, or the
    time budget is spent (then ``pending`` is set and the caller kicks another run)."""
    report = PublishReport()
    url = settings.RABBITMQ_URL
    if not url:
        return report
    batch_size = batch_size or settings.EVENTS_PUBLISH_BATCH
    started = time.monotonic()
    # A run already publishing in this process takes this request over instead of this task waiting
    # for it (and holding a worker thread meanwhile): ``rerun`` makes it look once more before it
    # stops. It checks the flag after releasing the lock, so a request is never left unseen.
    _shared.rerun = True
    while _shared.rerun:
        if not _shared.lock.acquire(blocking=False):
            return report
        try:
            _shared.rerun = False
            if not _publish_all(
                url=url, batch_size=batch_size, started=started, time_budget=time_budget, report=report
            ):
                return report
        finally:
            _shared.lock.release()
    return report


def _publish_all(*, url: str, batch_size: int, started: float, time_budget: float, report: PublishReport) -> bool:
    """Batches until none is full; False when the run must stop (broker failure, time budget)."""
    while True:
        try:
            count = _publish_batch(url=url, batch_size=batch_size)
        except BrokerUnavailable as exc:
            report.pending, report.error = True, str(exc)
            _remember(ok=False, error=str(exc))
            metrics.incr("rabbitmq_publish_failures_total")
            logger.warning("RabbitMQ publishing failed; events stay pending", extra={"error": str(exc)})
            return False
        report.published += count
        if count:
            metrics.incr("rabbitmq_events_published_total", count)
        if count < batch_size:
            _remember(ok=True)
            return True
        if time.monotonic() - started > time_budget:
            report.pending = True
            return False


def _publish_batch(*, url: str, batch_size: int) -> int:
    exchange = settings.EVENTS_EXCHANGE
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(queries.PUBLISHER_LOCK, [ADVISORY_LOCK_KEY])
            cursor.execute(queries.PUBLISH_PENDING_BATCH, [batch_size])  # raw rows: see events.queries
            events = cursor.fetchall()
        if not events:
            return 0
        confirmed: list[int] = []
        failure: BrokerUnavailable | None = None
        try:
            _shared.channel_for(url, exchange)
            messages = [
                (
                    f"tenant.{tenant_id}.{event_type}",
                    message_body(
                        event_id=event_id,
                        type=event_type,
                        tenant_id=tenant_id,
                        created_at=created_at,
                        payload_json=payload,
                    ),
                    {
                        "content_type": "application/json",
                        "delivery_mode": PERSISTENT,
                        "message_id": str(event_id),
                        "type": event_type,
                        "timestamp": int(created_at.timestamp()),
                        **({"correlation_id": correlation_id} if correlation_id else {}),
                    },
                )
                for _pk, event_id, tenant_id, event_type, created_at, correlation_id, payload in events
            ]
            count = _shared.publish_confirmed(messages)
            confirmed = [row[0] for row in events[:count]]
            if count < len(events):
                _shared.close()  # a nack or silence: start the next run on a fresh channel
                failure = BrokerUnavailable(f"RabbitMQ confirmed {count} of {len(events)} messages")
        except BrokerUnavailable as exc:
            _shared.close()
            failure = exc
        except Exception as exc:
            _shared.close()
            failure = BrokerUnavailable(f"publishing failed: {type(exc).__name__}: {str(exc)[:150]}")
        if confirmed:
            with connection.cursor() as cursor:
                cursor.execute(queries.EVENTS_MARK_PUBLISHED, [timezone.now(), confirmed])
    if failure is not None:
        raise failure
    return len(events)


_last_ok_written = 0.0
# A healthy publisher refreshes its state at most this often (two Redis round trips per run saved).
OK_STATE_REFRESH_SECONDS = 10.0


def _remember(*, ok: bool, error: str = "") -> None:
    global _last_ok_written
    if ok and time.monotonic() - _last_ok_written < OK_STATE_REFRESH_SECONDS:
        return
    _last_ok_written = time.monotonic() if ok else 0.0
    try:
        previous = cache.get(STATE_CACHE_KEY) or {}
        state = {"ok": ok, "error": error, "at": time.time()}
        state["failing_since"] = None if ok else (previous.get("failing_since") or time.time())
        cache.set(STATE_CACHE_KEY, state, None)
    except Exception:
        logger.warning("could not record the publisher state")


def publisher_state() -> dict[str, Any]:
    try:
        return cache.get(STATE_CACHE_KEY) or {}
    except Exception:
        return {}
