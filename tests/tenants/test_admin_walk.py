"""Every admin page of every registered model, as a superuser, a tenant owner and a tenant agent, with
another tenant's rows present: none answers a server error."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

from conversations import analytics_admin
from tenants import services


@pytest.mark.parametrize("role", ["superuser", "owner", "agent"])
def test_no_admin_page_answers_a_server_error(client, tenant, other_tenant, role):
    services.api_key_create(tenant=tenant)
    services.api_key_create(tenant=other_tenant)
    if role == "superuser":
        user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123456")
    else:
        user, _ = services.staff_user_create(tenant=tenant, username=role, role=role, password="pw-123456789")
    client.force_login(user)
    client.raise_request_exception = False

    failures = []
    for model in admin.site._registry:
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        urls = [reverse(f"{info}_changelist"), reverse(f"{info}_add")]
        for obj in model.objects.all()[:3]:
            urls += [reverse(f"{info}_{view}", args=[obj.pk]) for view in ("change", "delete", "history")]
        failures += [(url, status) for url in urls if (status := client.get(url).status_code) >= 500]

    # Custom views: the analytics page, each of its CSV exports, and another tenant's figures asked for.
    analytics = reverse("admin:conversations_conversation_analytics")
    urls = [analytics, f"{analytics}?tenant={other_tenant.pk}", f"{analytics}?start=2026-01-02&end=2026-01-01"]
    urls += [f"{analytics}?export={table}" for table in analytics_admin.TABLES]
    failures += [(url, status) for url in urls if (status := client.get(url).status_code) >= 500]
    assert client.get(analytics).status_code == 200
    assert client.get(f"{analytics}?tenant={other_tenant.pk}").status_code == (200 if role == "superuser" else 403)

    assert failures == []
