"""Tenant webhooks driven synchronously with a test clock: signing, retry schedule, dead-lettering,
replay, auto-disable, subscriptions, redirects and SSRF refusals, against a real local receiver."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from events import delivery, services
from events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from events.services import emit
from events.types import EventType
from tenants.models import TenantSecret
from tests.events.conftest import verify_standard_webhook

SCHEDULE = [5, 60, 300, 1800, 7200, 21600, 43200]


def make_endpoint(tenant, url, **kwargs):
    return services.webhook_endpoint_create(tenant=tenant, url=url, **kwargs)


def run(now):
    """What the workers do at ``now``: fan out pending events, then drain every endpoint."""
    delivery.dispatch_pending_events(now=now)
    reports = [
        delivery.deliver_due(endpoint_id=pk, now=now) for pk in WebhookEndpoint.objects.values_list("pk", flat=True)
    ]
    return sum(r.sent for r in reports)


def test_request_is_signed_per_standard_webhooks_with_event_body_and_custom_headers(tenant, receiver):
    created = make_endpoint(tenant, receiver.url, headers={"Authorization": "Bearer rcv-token-123"})
    event = emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"text": "héllo"})

    assert run(timezone.now()) == 1

    [request] = receiver.requests
    assert verify_standard_webhook(secret=created.secret, headers=request.headers, body=request.body)
    assert not verify_standard_webhook(
        secret=services.signing.generate_secret(), headers=request.headers, body=request.body
    )
    assert request.headers["webhook-id"] == str(event.event_id)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer rcv-token-123"
    assert request.json == {
        "id": str(event.event_id),
        "type": "message.received",
        "tenant_id": str(tenant.pk),
        "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
        "payload": {"text": "héllo"},
    }
    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempt_count, row.last_status_code) == ("succeeded", 1, 200)
    assert WebhookAttempt.objects.get().response_excerpt == '{"received": true, "status": 200}'


def test_signing_secret_and_header_values_are_stored_encrypted_only(tenant, receiver):
    created = make_endpoint(tenant, receiver.url, headers={"X-Receiver-Key": "hdr-value-987"})

    rows = list(TenantSecret.objects.filter(tenant=tenant).values_list("name", "ciphertext"))
    assert sorted(name for name, _ in rows) == [
        f"webhook.{created.endpoint.pk}.headers",
        f"webhook.{created.endpoint.pk}.signing",
    ]
    stored = json.dumps([list(r) for r in rows]) + json.dumps(
        list(WebhookEndpoint.objects.values("url", "header_names", "event_types"))
    )
    assert "hdr-value-987" not in stored
    assert created.secret not in stored
    assert created.secret.removeprefix("whsec_") not in stored
    assert WebhookEndpoint.objects.get().header_names == ["X-Receiver-Key"]


def test_retries_follow_the_schedule_with_the_same_webhook_id_until_success(tenant, make_receiver):
    receiver = make_receiver(plan=[500, 502, 503])
    created = make_endpoint(tenant, receiver.url)
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": 1})
    t0 = timezone.now()

    run(t0)
    row = WebhookDelivery.objects.get()
    assert row.status == "pending" and row.attempt_count == 1
    assert 4.5 <= (row.next_attempt_at - t0).total_seconds() <= 5.5
    assert run(t0 + timedelta(seconds=4.4)) == 0  # not due yet: nothing sent

    moments = [t0]
    for base in SCHEDULE[:3]:
        due = WebhookDelivery.objects.get().next_attempt_at
        assert base * 0.9 <= (due - moments[-1]).total_seconds() <= base * 1.1
        moments.append(due)
        assert run(due) == 1

    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempt_count, row.next_attempt_at) == ("succeeded", 4, None)
    assert [a.status_code for a in WebhookAttempt.objects.order_by("id")] == [500, 502, 503, 200]
    assert [a.started_at for a in WebhookAttempt.objects.order_by("id")] == moments
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert all(
        verify_standard_webhook(secret=created.secret, headers=r.headers, body=r.body) for r in receiver.requests
    )
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.failing_since, endpoint.last_failure_at, endpoint.last_success_at) == (None, *moments[2:])


def test_delivery_is_dead_after_the_last_scheduled_retry_and_an_event_says_so(tenant, make_receiver):
    receiver = make_receiver(default=500)
    created = make_endpoint(tenant, receiver.url)
    event = emit(tenant=tenant, type=EventType.CONVERSATION_CREATED, payload={})
    now = timezone.now()

    run(now)
    for _ in SCHEDULE:
        now = WebhookDelivery.objects.get().next_attempt_at
        run(now)

    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempt_count, row.next_attempt_at, row.last_error) == ("dead", 8, None, "HTTP 500")
    assert len(receiver.requests) == 8
    dead = Event.objects.get(type=EventType.WEBHOOK_DELIVERY_DEAD)
    assert dead.tenant_id == tenant.pk
    assert dead.payload == {
        "delivery_id": row.pk,
        "endpoint_id": str(created.endpoint.pk),
        "event_id": str(event.event_id),
        "event_type": "conversation.created",
        "attempts": 8,
        "last_status_code": 500,
        "last_error": "HTTP 500",
    }
    total = WebhookAttempt.objects.order_by("-id")[0].started_at - WebhookAttempt.objects.order_by("id")[0].started_at
    assert 0.9 * sum(SCHEDULE) <= total.total_seconds() <= 1.1 * sum(SCHEDULE)  # about 20.6 h
    # The failing endpoint is not sent news of its own failure.
    run(now)
    assert WebhookDelivery.objects.count() == 1


def test_dead_deliveries_are_replayed_one_by_one_and_in_bulk_with_the_same_webhook_id(
    tenant, make_receiver, settings, tenant_api
):
    settings.WEBHOOK_RETRY_SCHEDULE = [5]
    receiver = make_receiver(default=500)
    created = make_endpoint(tenant, receiver.url, event_types=["message.received"])
    for n in range(3):
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n})
    now = timezone.now()
    run(now)
    run(now + timedelta(seconds=6))
    assert WebhookDelivery.objects.filter(status="dead").count() == 3
    receiver.default = 200
    first, *_ = WebhookDelivery.objects.order_by("id")
    base = f"/api/tenants/{tenant.pk}/webhooks/{created.endpoint.pk}"

    response = tenant_api.post(f"{base}/deliveries/{first.pk}/replay/")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["attempt_count"]) == ("pending", 0)
    run(timezone.now())
    first.refresh_from_db()
    assert (first.status, first.attempt_count) == ("succeeded", 1)
    assert receiver.requests[-1].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]
    assert tenant_api.post(f"{base}/deliveries/{first.pk}/replay/").json()["error"]["code"] == "not_dead"

    call_command("replay_webhooks", tenant.slug, "--endpoint", str(created.endpoint.pk))
    run(timezone.now())

    assert sorted(WebhookDelivery.objects.values_list("status", flat=True)) == ["succeeded"] * 3
    assert len(receiver.requests) == 6 + 3


def test_endpoint_failing_for_a_day_is_disabled_the_tenant_is_told_and_re_enabling_resumes(
    tenant, make_receiver, tenant_api
):
    receiver = make_receiver(default=503)
    ops = make_receiver()
    created = make_endpoint(tenant, receiver.url, event_types=["message.received"])
    make_endpoint(tenant, ops.url, event_types=["webhook.endpoint_disabled"])
    emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 1})
    t0 = timezone.now()
    run(t0)
    run(t0 + timedelta(hours=23))  # 2 failures, 23 h apart: still active
    endpoint = WebhookEndpoint.objects.get(pk=created.endpoint.pk)
    assert endpoint.is_active and endpoint.failing_since == t0

    emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 2})
    run(t0 + timedelta(hours=24, minutes=1))

    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert endpoint.disabled_reason == "disabled automatically: every attempt failed for 24.0 h"
    notice = Event.objects.get(type=EventType.WEBHOOK_ENDPOINT_DISABLED)
    assert notice.payload["endpoint_id"] == str(endpoint.pk)
    assert notice.payload["pending_deliveries"] == 2
    sent = len(receiver.requests)
    emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": 3})
    run(t0 + timedelta(hours=30))
    assert [r.json["type"] for r in ops.requests] == ["webhook.endpoint_disabled"]  # the tenant's other endpoint
    assert len(receiver.requests) == sent  # disabled: nothing sent, nothing new queued for it
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 2

    receiver.default = 200
    response = tenant_api.patch(f"/api/tenants/{tenant.pk}/webhooks/{endpoint.pk}/", {"is_active": True}, format="json")
    assert response.status_code == 200
    assert (response.json()["is_active"], response.json()["failing_since"]) == (True, None)
    run(timezone.now() + timedelta(hours=31))
    assert sorted(WebhookDelivery.objects.filter(endpoint=endpoint).values_list("status", flat=True)) == [
        "succeeded",
        "succeeded",
    ]


def test_endpoint_receives_only_the_event_types_it_subscribed_to(tenant, other_tenant, receiver):
    make_endpoint(tenant, receiver.url, event_types=["message.received", "human_handoff.requested"])
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"k": 1})
    emit(tenant=other_tenant, type=EventType.MESSAGE_RECEIVED, payload={"k": 2})

    run(timezone.now())

    assert [(r.json["type"], r.json["payload"]) for r in receiver.requests] == [("message.received", {"k": 1})]
    assert Event.objects.filter(dispatch_pending=True).count() == 0


def test_redirects_are_not_followed(tenant, make_receiver):
    target = make_receiver()
    redirecting = make_receiver(default=302, location=target.url)
    make_endpoint(tenant, redirecting.url)
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})

    run(timezone.now())

    assert target.requests == []
    row = WebhookDelivery.objects.get()
    assert (row.status, row.last_status_code, row.last_error) == (
        "pending",
        302,
        "HTTP 302: redirects are not followed",
    )


def test_unreachable_receiver_is_a_failed_attempt_with_a_reason(tenant, receiver, local_http_server):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    make_endpoint(tenant, f"http://127.0.0.1:{closed_port}/hook?token=s3cr3t")
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})

    run(timezone.now())

    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempt_count, row.last_error) == ("pending", 1, "connection failed: connection refused")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.20.30.40/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
        "http://192.168.1.10/hook",
    ],
)
def test_private_loopback_and_link_local_urls_are_refused(tenant, tenant_api, settings, url):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False

    response = tenant_api.post(f"/api/tenants/{tenant.pk}/webhooks/", {"url": url}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "destination refused" in response.json()["error"]["details"]["url"][0]
    assert WebhookEndpoint.objects.count() == 0


def test_delivery_to_a_name_resolving_to_loopback_is_refused_at_connect_time(tenant, receiver, settings):
    port = receiver.url.split(":")[2].split("/")[0]
    make_endpoint(tenant, f"http://localhost:{port}/hooks/metachat")  # allowed when configured (tests)
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})

    run(timezone.now())

    assert receiver.requests == []
    row = WebhookDelivery.objects.get()
    assert row.status == "pending"
    assert row.last_error.startswith("destination refused: localhost resolves to ")
    assert "loopback address" in row.last_error


def test_rotated_secret_signs_alongside_the_old_one_during_the_grace_period(tenant, receiver, tenant_api):
    created = make_endpoint(tenant, receiver.url, event_types=["message.sent"])
    url = f"/api/tenants/{tenant.pk}/webhooks/{created.endpoint.pk}/rotate-secret/"

    new_secret = tenant_api.post(url).json()["secret"]
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    run(timezone.now())
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    run(timezone.now() + timedelta(hours=25))

    during, after = receiver.requests
    assert new_secret != created.secret
    assert verify_standard_webhook(secret=new_secret, headers=during.headers, body=during.body)
    assert verify_standard_webhook(secret=created.secret, headers=during.headers, body=during.body)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verify_standard_webhook(secret=new_secret, headers=after.headers, body=after.body)
    assert not verify_standard_webhook(secret=created.secret, headers=after.headers, body=after.body)


def test_a_claim_left_by_a_crashed_worker_is_retried_once_its_lease_expires(tenant, receiver):
    created = make_endpoint(tenant, receiver.url, event_types=["message.sent"])
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    now = timezone.now()
    delivery.dispatch_pending_events(now=now)
    [_claimed] = delivery._claim(endpoint=created.endpoint, now=now, limit=20)  # then the worker dies

    assert run(now + timedelta(seconds=60)) == 0  # still leased: nobody sends it twice meanwhile
    lease = WebhookDelivery.objects.get().next_attempt_at
    assert run(lease) == 1
    assert WebhookDelivery.objects.get().status == "succeeded"
    assert len(receiver.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_an_event_the_publisher_holds_for_an_instant_is_fanned_out_by_the_kick_that_came_for_it(tenant, receiver):
    import threading

    import psycopg
    from django.db import connection

    make_endpoint(tenant, receiver.url)
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})  # committed (autocommit)
    event = Event.objects.get()
    with psycopg.connect(**connection.get_connection_params()) as publisher:
        # As the RabbitMQ publisher does between marking a batch published and its commit.
        publisher.execute(
            f"UPDATE {Event._meta.db_table} SET publish_pending = false WHERE id = %s",
            [event.pk],
        )
        commit = threading.Timer(0.1, publisher.commit)
        commit.start()
        handled = delivery.dispatch_pending_events()
        commit.join()

    assert handled == 1
    assert WebhookDelivery.objects.filter(event=event).count() == 1
    assert not Event.objects.get(pk=event.pk).dispatch_pending
