"""RabbitMQ publishing from the outbox, against the real broker (skipped without RABBITMQ_URL)."""

from __future__ import annotations

import json

from django.db import transaction

from config.celery import app
from events import outbox, publisher
from events.models import Event
from events.services import emit
from events.types import EventType
from tests.conftest import wait_until


def test_events_are_published_with_tenant_routing_keys_persistent_and_confirmed(rabbit, tenant, other_tenant):
    only_a = rabbit.bind(f"tenant.{tenant.pk}.#")
    b_messages = rabbit.bind(f"tenant.{other_tenant.pk}.message.*")
    received_everywhere = rabbit.bind("tenant.*.message.received")
    first = emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"text": "hi"})
    emit(tenant=other_tenant, type=EventType.MESSAGE_RECEIVED, payload={"text": "yo"})
    emit(tenant=tenant, type=EventType.CONVERSATION_CREATED, payload={"conversation_id": 7})
    emit(tenant=other_tenant, type=EventType.DOCUMENT_INDEXED, payload={})

    report = publisher.publish_pending()

    assert (report.published, report.error) == (4, "")
    a = rabbit.drain(only_a, expect=2)
    assert [m.routing_key for m, _, _ in a] == [
        f"tenant.{tenant.pk}.message.received",
        f"tenant.{tenant.pk}.conversation.created",
    ]
    _method, properties, body = a[0]
    assert json.loads(body) == {
        "id": str(first.event_id),
        "type": "message.received",
        "tenant_id": str(tenant.pk),
        "created_at": first.created_at.isoformat().replace("+00:00", "Z"),
        "payload": {"text": "hi"},
    }
    assert (properties.delivery_mode, properties.content_type, properties.message_id) == (
        2,
        "application/json",
        str(first.event_id),
    )
    assert [json.loads(b)["payload"] for _, _, b in rabbit.drain(b_messages, expect=1)] == [{"text": "yo"}]
    assert len(rabbit.drain(received_everywhere, expect=2)) == 2
    assert Event.objects.filter(publish_pending=True).count() == 0
    assert Event.objects.filter(published_at__isnull=True).count() == 0
    assert publisher.publish_pending().published == 0  # nothing twice


def test_broker_down_keeps_events_pending_reports_degraded_then_publishes_all_in_order(
    rabbit, tenant, live_worker, settings, client
):
    queue = rabbit.bind(f"tenant.{tenant.pk}.#")
    settings.RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens there
    for n in range(5):
        with transaction.atomic():
            emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": n})

    wait_until(lambda: publisher.publisher_state().get("ok") is False)
    health = client.get("/api/health").json()

    assert health["status"] == "degraded"
    assert health["checks"]["event_outbox"]["status"] == "down"
    assert health["checks"]["event_outbox"]["publish_pending"] == 5
    assert health["checks"]["event_outbox"]["publisher_error"].startswith("cannot connect to RabbitMQ")
    assert rabbit.drain(queue, expect=0, timeout=0.5) == []

    settings.RABBITMQ_URL = rabbit.url
    with transaction.atomic():
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": 5})
    outbox.sweep(settle_seconds=0)
    messages = rabbit.drain(queue, expect=6, timeout=15)

    assert [json.loads(body)["payload"]["n"] for _, _, body in messages] == [0, 1, 2, 3, 4, 5]
    wait_until(lambda: not Event.objects.filter(publish_pending=True).exists())
    assert client.get("/api/health").json()["checks"]["event_outbox"]["status"] == "up"


def test_outbox_tasks_run_on_the_webhooks_queue_not_the_message_processing_one():
    for task in ("events.dispatch_events", "events.deliver_endpoint", "events.publish_events", "events.sweep_outbox"):
        assert app.amqp.router.route({}, task)["queue"].name == "webhooks"
