"""The whole path with a real Celery worker: commit → after-commit kick → fan-out → signed request."""

from __future__ import annotations

import itertools
import time
import uuid

from celery import shared_task
from django.core.cache import cache
from django.db import transaction

from config.celery import app
from events import services
from events.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from events.services import emit
from events.types import EventType
from tests.conftest import wait_until
from tests.events.conftest import verify_standard_webhook


@shared_task(name="tests.events.mark_done")
def mark_done(key: str) -> None:
    cache.set(key, time.time(), 60)


def test_committed_events_reach_the_receiver_through_the_worker_and_rolled_back_ones_never(
    tenant, receiver, live_worker
):
    created = services.webhook_endpoint_create(tenant=tenant, url=receiver.url, event_types=["message.received"])
    with transaction.atomic():
        for n in range(3):
            emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
    try:
        with transaction.atomic():
            emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": "rolled back"})
            raise RuntimeError("the change failed")
    except RuntimeError:
        pass

    wait_until(lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 3)

    assert sorted(r.json["payload"]["n"] for r in receiver.requests) == [0, 1, 2]
    assert all(
        verify_standard_webhook(secret=created.secret, headers=r.headers, body=r.body) for r in receiver.requests
    )


def test_a_hanging_receiver_holds_at_most_its_threads_while_other_tenants_and_the_default_queue_keep_flowing(
    tenant, other_tenant, make_receiver, live_worker, settings
):
    settings.WEBHOOK_TIMEOUT_SECONDS = 4
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 2
    hanging = make_receiver(hang_seconds=30)
    fast = make_receiver()
    hanging_endpoint = services.webhook_endpoint_create(
        tenant=tenant, url=hanging.url, event_types=["message.received"]
    ).endpoint
    services.webhook_endpoint_create(tenant=other_tenant, url=fast.url, event_types=["message.received"])
    with transaction.atomic():
        for n in range(3):
            emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
    wait_until(lambda: len(hanging.requests) == 1, timeout=5)
    started = time.monotonic()

    with transaction.atomic():
        for n in range(3):
            emit(tenant=other_tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
    for n in range(3, 6):  # more for the hanging receiver, each fanned out (and its drain kicked) on its own
        with transaction.atomic():
            emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
        wait_until(lambda n=n: WebhookDelivery.objects.filter(endpoint=hanging_endpoint).count() == n + 1, timeout=3)
    key = f"events-test-{uuid.uuid4().hex}"
    app.send_task("tests.events.mark_done", args=[key], queue="default")
    wait_until(lambda: len(fast.requests) == 3 and cache.get(key) and len(hanging.requests) >= 2, timeout=3.5)

    assert time.monotonic() - started < 3.5  # before the hanging requests even timed out
    assert len(hanging.requests) == 2  # two drains hang; the other kicks found both slots taken
    attempt = wait_until(lambda: WebhookAttempt.objects.filter(delivery__endpoint__tenant=tenant).first(), timeout=8)
    assert attempt.error == "no answer within 4 s"
    assert attempt.success is False


def test_a_healthy_endpoint_is_drained_by_up_to_its_threads_and_what_arrives_meanwhile_follows(
    tenant, make_receiver, live_worker, settings
):
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 2
    slow = make_receiver(hang_seconds=2.0)  # answers, slowly
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=slow.url, event_types=["message.received"]).endpoint
    for n in range(3):  # one at a time, each while the earlier ones are in flight
        with transaction.atomic():
            emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
        wait_until(lambda n=n: WebhookDelivery.objects.filter(endpoint=endpoint).count() == n + 1, timeout=3)
        if n < 2:
            wait_until(lambda n=n: len(slow.requests) == n + 1, timeout=3)

    # No sweep runs here: a drain that was running kicks the next one when it lets go.
    wait_until(lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 3, timeout=12)

    first, second, third = sorted(r.at for r in slow.requests)
    assert second - first < 1.9  # two requests in flight at once
    assert third - first >= 1.95  # the third waited for one of them to be answered


def test_a_failing_endpoint_is_drained_by_one_thread_at_a_time(tenant, make_receiver, live_worker, settings):
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 4
    slow = make_receiver(hang_seconds=0.8, plan=[500])  # the first attempt fails: the endpoint is failing
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=slow.url, event_types=["message.received"]).endpoint
    with transaction.atomic():
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 0})
    wait_until(lambda: WebhookAttempt.objects.filter(delivery__endpoint=endpoint).exists(), timeout=5)
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).failing_since is not None

    with transaction.atomic():
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 1})
    wait_until(lambda: len(slow.requests) == 2, timeout=5)
    with transaction.atomic():  # while that request is in flight
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 2})

    wait_until(
        lambda: {1, 2} <= {d.event.payload["n"] for d in WebhookDelivery.objects.filter(status="succeeded")},
        timeout=10,
    )
    arrivals = sorted(r.at for r in slow.requests)[1:]
    # One request at a time: each arrived after the previous one's 0.8 s answer.
    assert all(later - earlier >= 0.75 for earlier, later in itertools.pairwise(arrivals))


def test_an_event_whose_kick_was_lost_is_delivered_by_the_sweep(tenant, receiver, live_worker):
    from events import outbox
    from events.models import Event

    services.webhook_endpoint_create(tenant=tenant, url=receiver.url, event_types=["message.sent"])
    # As if the process died between the commit and the after-commit kick.
    Event.objects.create(tenant=tenant, type="message.sent", payload={"lost": True}, dispatch_pending=True)
    # The worker has taken everything queued on the outbox's queue before this marker: no task for the event.
    key = f"events-test-{uuid.uuid4().hex}"
    app.send_task("tests.events.mark_done", args=[key], queue="webhooks")
    wait_until(lambda: cache.get(key))
    assert receiver.requests == []
    assert Event.objects.get(payload__lost=True).dispatch_pending

    outbox.sweep(settle_seconds=0)

    wait_until(lambda: receiver.requests)
    assert receiver.requests[0].json["payload"] == {"lost": True}
