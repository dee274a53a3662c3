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
    documents = {t.pk: _rows_of_the_admin_forms(t) for t in (tenant, other_tenant)}
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

    # Custom views of the settings, channel and document forms (tenants.admin, channels_app.admin,
    # knowledge.admin): the channel type chooser and each type's add form, each document's progress.
    add_channel = reverse("admin:channels_app_channel_add")
    urls = [add_channel, *(f"{add_channel}?type={kind}" for kind in ("webchat", "whatsapp", "messenger", "nope"))]
    urls += [reverse("admin:knowledge_document_progress", args=[doc.pk]) for docs in documents.values() for doc in docs]
    urls += [reverse("admin:knowledge_document_progress", args=[doc.pk]) + "?chunks=1" for doc in documents[tenant.pk]]
    failures += [(url, status) for url in urls if (status := client.get(url).status_code) >= 500]
    foreign = client.get(reverse("admin:knowledge_document_progress", args=[documents[other_tenant.pk][0].pk]))
    assert foreign.status_code == (200 if role == "superuser" else 404)

    assert failures == []


def _rows_of_the_admin_forms(tenant):
    """A web chat and a WhatsApp channel, a secret the settings may name, a settings key the schema does
    not know, and documents (one indexed with a chunk, one waiting) of ``tenant``."""
    import uuid

    from django.utils import timezone

    from channels_app import services as channel_services
    from knowledge.models import Chunk, Document
    from tenants.models import Tenant
    from tenants.secrets import tenant_secret_set

    channel_services.channel_create(
        tenant=tenant, type="webchat", name="Site", config={"allowed_origins": ["https://example.com"]}
    )
    channel_services.channel_create(
        tenant=tenant, type="whatsapp", name="Line", external_id=f"10{uuid.uuid4().int % 10**12}",
        credentials={"app_secret": "s", "access_token": "t", "verify_token": "v"},
    )  # fmt: skip
    tenant_secret_set(tenant=tenant, name="llm-key", value="sk-x")
    Tenant.objects.filter(pk=tenant.pk).update(settings={**tenant.settings, "legacy": 1})
    fields = {"filename": "a.txt", "format": "text", "size_bytes": 1, "storage_name": "-"}
    documents = [
        Document.objects.create(
            tenant=tenant, title=status, sha256=uuid.uuid4().hex, status=status, queued_at=timezone.now(), **fields
        )
        for status in ("indexed", "pending")
    ]
    Chunk.objects.create(tenant=tenant, document=documents[0], position=0, content="Hello", section="Intro", page=1)
    return documents
