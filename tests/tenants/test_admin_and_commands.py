"""The Django admin as the staff UI (tenant scoping) and the management commands."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from events.services import emit
from events.types import EventType
from tenants import services
from tenants.models import ApiKey, Membership, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, tenant):
    user, _ = services.staff_user_create(tenant=tenant, username="ann", role="owner", password="pw-ann-123456")
    client.force_login(user)
    return client


def test_tenant_staff_see_only_their_tenants_rows(staff_client, tenant, other_tenant):
    mine = services.api_key_create(tenant=tenant, name="mine").api_key
    theirs = services.api_key_create(tenant=other_tenant, name="theirs").api_key
    emit(tenant=tenant, type=EventType.TENANT_UPDATED, payload={"who": "mine-event"})
    emit(tenant=other_tenant, type=EventType.TENANT_UPDATED, payload={"who": "their-event"})

    keys_page = staff_client.get("/admin/tenants/apikey/").content.decode()
    events_page = staff_client.get("/admin/events/event/").content.decode()
    tenants_page = staff_client.get("/admin/tenants/tenant/").content.decode()
    foreign_change = staff_client.get(f"/admin/tenants/apikey/{theirs.pk}/change/")

    assert mine.prefix in keys_page and theirs.prefix not in keys_page
    assert "Acme" in tenants_page and "Globex" not in tenants_page
    assert events_page.count("tenant.updated") == 1
    assert foreign_change.status_code == 302  # "doesn't exist", exactly like a missing id


def test_staff_cannot_open_another_tenants_settings(staff_client, other_tenant):
    response = staff_client.get(f"/admin/tenants/tenant/{other_tenant.pk}/change/")

    assert response.status_code == 302


def test_staff_new_rows_get_their_tenant(staff_client, tenant):
    response = staff_client.post("/admin/tenants/tenantsecret/add/", {"name": "llm_key", "value": "s3cr3t-value"})

    assert response.status_code == 302
    from tenants.models import TenantSecret

    assert TenantSecret.objects.get(name="llm_key").tenant_id == tenant.pk


def test_agents_only_get_the_inbox_models(client, tenant):
    user, _ = services.staff_user_create(tenant=tenant, username="bob", role="agent", password="pw-bob-123456")
    client.force_login(user)

    assert client.get("/admin/tenants/apikey/").status_code == 403
    assert user.has_perm("conversations.change_conversation")


def test_superuser_sees_every_tenant(client, tenant, other_tenant):
    admin = get_user_model().objects.create_superuser("root", "", "pw-root-123456")
    client.force_login(admin)

    page = client.get("/admin/tenants/tenant/").content.decode()

    assert "Acme" in page and "Globex" in page


def test_create_tenant_command_prints_id_and_a_working_key(client):
    out = StringIO()
    call_command("create_tenant", "Initech", "--slug", "initech", stdout=out)

    text = out.getvalue()
    tenant = Tenant.objects.get(slug="initech")
    key = re.search(r"api key:\s+(\S+)", text).group(1)
    assert str(tenant.pk) in text
    assert client.get(f"/api/tenants/{tenant.pk}/", HTTP_X_API_KEY=key).status_code == 200


def test_create_api_key_and_staff_user_commands(tenant):
    keys_out, staff_out = StringIO(), StringIO()
    call_command("create_api_key", tenant.slug, "--name", "ops", stdout=keys_out)
    call_command("create_staff_user", str(tenant.pk), "carol", "--role", "agent", stdout=staff_out)

    assert ApiKey.objects.for_tenant(tenant).filter(name="ops").count() == 1
    assert Membership.objects.get(user__username="carol").role == "agent"
    assert "password:" in staff_out.getvalue()


def test_bootstrap_demo_is_idempotent():
    first, second = StringIO(), StringIO()
    call_command("bootstrap_demo", stdout=first)
    call_command("bootstrap_demo", stdout=second)

    assert "password:" in first.getvalue() and "API key:" in first.getvalue()
    assert "password:" not in second.getvalue() and "API key:" not in second.getvalue()
    assert Tenant.objects.filter(slug="demo").count() == 1
