"""/api/tenants/{id}/webhooks/..., the admin pages and replay_webhooks: what tenants and staff see."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from events import delivery, services
from events.models import WebhookDelivery, WebhookEndpoint
from events.services import emit
from events.types import EventType
from tenants import services as tenant_services
from tests.events.conftest import verify_standard_webhook


def test_create_shows_the_secret_once_and_lists_never_do(tenant, tenant_api, receiver):
    base = f"/api/tenants/{tenant.pk}/webhooks/"

    created = tenant_api.post(
        base,
        {"url": receiver.url, "event_types": ["message.received"], "headers": {"X-Token": "abc-123"}},
        format="json",
    )

    assert created.status_code == 201
    body = created.json()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", body["secret"])
    assert (body["event_types"], body["header_names"], body["is_active"]) == (["message.received"], ["X-Token"], True)
    listed = tenant_api.get(base).json()["results"]
    detail = tenant_api.get(f"{base}{body['id']}/").json()
    assert [e["id"] for e in listed] == [body["id"]]
    assert "secret" not in listed[0] and "secret" not in detail
    assert "abc-123" not in str(listed) + str(detail)


def test_invalid_input_gets_field_errors(tenant, tenant_api, receiver):
    base = f"/api/tenants/{tenant.pk}/webhooks/"

    bad_type = tenant_api.post(base, {"url": receiver.url, "event_types": ["message.recieved"]}, format="json")
    bad_header = tenant_api.post(base, {"url": receiver.url, "headers": {"webhook-signature": "x"}}, format="json")
    bad_url = tenant_api.post(base, {"url": "ftp://example.com/x"}, format="json")

    assert bad_type.status_code == 400
    assert bad_type.json()["error"]["details"] == {"event_types": ["unknown: message.recieved"]}
    assert bad_header.json()["error"]["details"] == {
        "headers": ["'webhook-signature' is set by the platform and cannot be overridden"]
    }
    assert bad_url.status_code == 400 and "url" in bad_url.json()["error"]["details"]
    assert WebhookEndpoint.objects.count() == 0


def test_another_tenants_webhooks_answer_404_everywhere(tenant, other_tenant, api_for, receiver):
    theirs = services.webhook_endpoint_create(tenant=other_tenant, url=receiver.url).endpoint
    emit(tenant=other_tenant, type=EventType.MESSAGE_SENT, payload={})
    delivery.dispatch_pending_events(now=timezone.now())
    row = WebhookDelivery.objects.get()
    client = api_for(tenant)
    mine = f"/api/tenants/{tenant.pk}/webhooks/{theirs.pk}"
    foreign = f"/api/tenants/{other_tenant.pk}/webhooks/{theirs.pk}"

    answers = [
        client.get(f"{mine}/").status_code,
        client.patch(f"{mine}/", {"url": receiver.url}, format="json").status_code,
        client.delete(f"{mine}/").status_code,
        client.post(f"{mine}/rotate-secret/").status_code,
        client.get(f"{mine}/deliveries/").status_code,
        client.post(f"{mine}/deliveries/{row.pk}/replay/").status_code,
        client.get(f"{foreign}/").status_code,
        client.get(f"{foreign}/deliveries/{row.pk}/").status_code,
        client.get(f"/api/tenants/{other_tenant.pk}/webhooks/").status_code,
    ]

    assert answers == [404] * 9
    assert client.get(f"/api/tenants/{tenant.pk}/webhooks/").json()["results"] == []
    assert WebhookEndpoint.objects.filter(pk=theirs.pk).exists()


def test_deliveries_list_filters_by_status_and_detail_shows_attempts(tenant, tenant_api, make_receiver):
    receiver = make_receiver(plan=[500])
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url, event_types=["message.sent"]).endpoint
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    now = timezone.now()
    delivery.dispatch_pending_events(now=now)
    delivery.deliver_due(endpoint_id=endpoint.pk, now=now)
    base = f"/api/tenants/{tenant.pk}/webhooks/{endpoint.pk}/deliveries/"

    pending = tenant_api.get(base, {"status": "pending"}).json()["results"]
    dead = tenant_api.get(base, {"status": "dead"}).json()["results"]
    detail = tenant_api.get(f"{base}{pending[0]['id']}/").json()

    assert len(pending) == 1 and dead == []
    assert (pending[0]["event_type"], pending[0]["attempt_count"], pending[0]["last_status_code"]) == (
        "message.sent",
        1,
        500,
    )
    assert [(a["status_code"], a["success"], a["error"]) for a in detail["attempts"]] == [(500, False, "HTTP 500")]
    assert tenant_api.get(base, {"status": "lost"}).status_code == 400


def test_replay_of_a_disabled_endpoint_is_refused_with_409(tenant, tenant_api, receiver):
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint
    services.webhook_endpoint_update(tenant=tenant, endpoint=endpoint, is_active=False)

    response = tenant_api.post(f"/api/tenants/{tenant.pk}/webhooks/{endpoint.pk}/replay/", {}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "endpoint_disabled"


def test_delete_removes_the_endpoint_its_deliveries_and_its_secrets(tenant, tenant_api, receiver):
    from tenants.models import TenantSecret

    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url, headers={"X-A": "1"}).endpoint
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    delivery.dispatch_pending_events(now=timezone.now())

    assert tenant_api.delete(f"/api/tenants/{tenant.pk}/webhooks/{endpoint.pk}/").status_code == 204
    assert (WebhookEndpoint.objects.count(), WebhookDelivery.objects.count()) == (0, 0)
    assert not TenantSecret.objects.filter(name__startswith=f"webhook.{endpoint.pk}").exists()


@pytest.fixture
def staff_client(client, tenant):
    user, _ = tenant_services.staff_user_create(tenant=tenant, username="ann", role="owner", password="pw-ann-123456")
    client.force_login(user)
    return client


def test_admin_creates_an_endpoint_showing_the_secret_once_and_rotates_it(staff_client, tenant, receiver):
    response = staff_client.post(
        "/admin/events/webhookendpoint/add/",
        {
            "url": receiver.url,
            "description": "CRM",
            "event_types": ["message.received"],
            "is_active": "on",
            "set_headers": "X-Api-Key: k-42",
        },
    )

    page = response.content.decode()
    secret = re.search(r"whsec_[A-Za-z0-9+/=]+", page).group(0)
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.tenant_id, endpoint.description, endpoint.header_names) == (tenant.pk, "CRM", ["X-Api-Key"])
    assert "no-store" in response["Cache-Control"]
    assert secret not in staff_client.get(f"/admin/events/webhookendpoint/{endpoint.pk}/change/").content.decode()
    emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={})
    delivery.dispatch_pending_events(now=timezone.now())
    delivery.deliver_due(endpoint_id=endpoint.pk, now=timezone.now())
    assert verify_standard_webhook(secret=secret, headers=receiver.requests[0].headers, body=receiver.requests[0].body)
    assert receiver.requests[0].headers["x-api-key"] == "k-42"

    rotated = staff_client.post(
        "/admin/events/webhookendpoint/",
        {"action": "rotate_secret", "_selected_action": [str(endpoint.pk)]},
    ).content.decode()
    new_secret = re.search(r"whsec_[A-Za-z0-9+/=]+", rotated).group(0)
    assert new_secret != secret


def test_admin_staff_do_not_see_other_tenants_endpoints_or_deliveries(staff_client, other_tenant, receiver):
    theirs = services.webhook_endpoint_create(tenant=other_tenant, url=receiver.url, description="their-crm").endpoint
    emit(tenant=other_tenant, type=EventType.MESSAGE_SENT, payload={})
    delivery.dispatch_pending_events(now=timezone.now())

    assert "their-crm" not in staff_client.get("/admin/events/webhookendpoint/").content.decode()
    assert staff_client.get(f"/admin/events/webhookendpoint/{theirs.pk}/change/").status_code == 302
    row = WebhookDelivery.objects.get()
    assert staff_client.get(f"/admin/events/webhookdelivery/{row.pk}/change/").status_code == 302


def test_replay_command_counts_and_names_missing_things(tenant):
    out = StringIO()
    call_command("replay_webhooks", tenant.slug, "--dry-run", stdout=out)
    assert out.getvalue().strip() == "0 dead deliveries would be replayed"
    with pytest.raises(CommandError, match="no webhook endpoint"):
        call_command("replay_webhooks", tenant.slug, "--endpoint", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("replay_webhooks", tenant.slug, "--since", "yesterday")
