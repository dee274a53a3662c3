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
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pika
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from config import metrics
from events.models import Event

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "events publisher" (any constant; unique within this database).
ADVISORY_LOCK_KEY = 0x6D63_6576_7075_62  # "mcevpub"
STATE_CACHE_KEY = "events:publisher:state"


class BrokerUnavailable(Exception):
    pass


@dataclass
class PublishReport:
    published: int = 0
    pending: bool = False  # events were left pending (broker failure or time budget)
    error: str = ""


def routing_key(event: Event) -> str:
    return f"tenant.{event.tenant_id}.{event.type}"


def connection_parameters(url: str) -> pika.URLParameters:
    """pika parameters for RABBITMQ_URL. Accepts the kombu/Celery spelling of the default vhost
    (``amqp://host:5672//``), which pika would read as an empty vhost name."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if slash and path in ("", "/"):
        url = f"{scheme}{sep}{host}/%2F"
    return pika.URLParameters(url)


class _Connection:
    """One BlockingConnection per process, reused across runs (pika is not thread-safe: a lock).

    Publisher confirms are collected per batch, not per message: the batch is written at once and
    the broker's (possibly ``multiple``) Basic.Ack frames are awaited together, so throughput does
    not depend on the round-trip time to the broker. pika's BlockingChannel only offers one
    synchronous confirm per publish, hence the underlying channel (``_impl``) for this part.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url = ""
        self.connection: Any = None
        self.channel: Any = None
        self.exchange = ""
        self.next_tag = 0
        self.unconfirmed: set[int] = set()
        self.nacked: set[int] = set()

    def channel_for(self, url: str, exchange: str) -> Any:
        if self.connection is not None and (self.url != url or not self.connection.is_open):
            self.close()
        if self.connection is None:
            params = connection_parameters(url)
            params.socket_timeout = settings.EVENTS_PUBLISH_CONNECT_TIMEOUT_SECONDS
            params.blocked_connection_timeout = 30
            params.connection_attempts = 1
            try:
                self.connection = pika.BlockingConnection(params)
            except Exception as exc:
                raise BrokerUnavailable(f"cannot connect to RabbitMQ: {type(exc).__name__}") from None
            self.url = url
            self.channel = None
        if self.channel is None or not self.channel.is_open or self.exchange != exchange:
            self.channel = self.connection.channel()
            self.next_tag = 0
            self.unconfirmed.clear()
            self.nacked.clear()
            selected: list[bool] = []
            self.channel._impl.confirm_delivery(
                ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True)
            )
            self._wait(lambda: bool(selected), timeout=10.0, what="Confirm.SelectOk")
            self.channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
            self.exchange = exchange
        return self.channel

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = {t for t in self.unconfirmed if t <= method.delivery_tag} if method.multiple else {method.delivery_tag}
        self.unconfirmed -= tags
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked |= tags

    def _wait(self, done: Any, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"RabbitMQ did not answer ({what}) within {timeout:g} s")
            self.connection.process_data_events(time_limit=0.05)

    def publish_confirmed(self, messages: list[tuple[str, bytes, Any]], *, timeout: float = 30.0) -> int:
        """Publish (routing_key, body, properties) in order; return how many leading messages the
        broker confirmed (all of them, unless it nacked one or stopped answering)."""
        tags = []
        for routing_key, body, properties in messages:
            self.next_tag += 1
            self.unconfirmed.add(self.next_tag)
            tags.append(self.next_tag)
            self.channel._impl.basic_publish(
                exchange=self.exchange, routing_key=routing_key, body=body, properties=properties
            )
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
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:
            pass
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
    with _shared.lock:
        while True:
            try:
                count = _publish_batch(url=url, batch_size=batch_size)
            except BrokerUnavailable as exc:
                report.pending, report.error = True, str(exc)
                _remember(ok=False, error=str(exc))
                metrics.incr("rabbitmq_publish_failures_total")
                logger.warning("RabbitMQ publishing failed; events stay pending", extra={"error": str(exc)})
                return report
            report.published += count
            if count:
                metrics.incr("rabbitmq_events_published_total", count)
            if count < batch_size:
                _remember(ok=True)
                return report
            if time.monotonic() - started > time_budget:
                report.pending = True
                return report


def _publish_batch(*, url: str, batch_size: int) -> int:
    exchange = settings.EVENTS_EXCHANGE
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        events = list(Event.objects.filter(publish_pending=True).order_by("id")[:batch_size])
        if not events:
            return 0
        confirmed: list[int] = []
        failure: BrokerUnavailable | None = None
        try:
            _shared.channel_for(url, exchange)
            messages = [
                (
                    routing_key(event),
                    json.dumps(event.as_message(), separators=(",", ":"), ensure_ascii=False).encode(),
                    pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=str(event.event_id),
                        type=event.type,
                        timestamp=int(event.created_at.timestamp()),
                        correlation_id=event.correlation_id or None,
                    ),
                )
                for event in events
            ]
            count = _shared.publish_confirmed(messages)
            confirmed = [event.pk for event in events[:count]]
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
            Event.objects.filter(pk__in=confirmed).update(publish_pending=False, published_at=timezone.now())
    if failure is not None:
        raise failure
    return len(events)


def _remember(*, ok: bool, error: str = "") -> None:
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
