"""Tenants, API keys, settings, rate limits, errors and the audit log over the REST API."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import get_resolver

from events.models import Event
from events.services import emit
from events.types import EventType
from tenants import services
from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db


def test_admin_key_creates_a_tenant_with_default_settings_and_a_first_key(admin_api):
    response = admin_api.post("/api/tenants/", {"name": "Acme Inc"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "acme-inc"
    assert body["settings"]["ragConfig"] == {
        "topK": 5,
        "minSimilarity": 0.7,
        "hybridWeights": {"keyword": 0.3, "vector": 0.7},
        "fusion": "weighted",
    }
    assert body["settings"]["humanHandoffKeywords"] == ["human", "agent", "help"]
    key = body["api_key"]["key"]
    assert key.startswith("mcp_") and len(key) > 40
    me = admin_api.get(f"/api/tenants/{body['id']}/", HTTP_X_API_KEY=key)
    assert me.status_code == 200


def test_tenant_key_works_as_bearer_token(tenant, api_for):
    key = services.api_key_create(tenant=tenant).raw_key
    client = api_for(tenant)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    assert client.get(f"/api/tenants/{tenant.pk}/").json()["name"] == "Acme"


def test_requests_without_or_with_a_wrong_key_are_refused(client, tenant):
    missing = client.get(f"/api/tenants/{tenant.pk}/")
    wrong = client.get(f"/api/tenants/{tenant.pk}/", HTTP_X_API_KEY="mcp_not-a-real-key")

    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "not_authenticated"
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "authentication_failed"


def test_a_tenant_key_cannot_list_or_create_tenants(tenant_api):
    assert tenant_api.get("/api/tenants/").status_code == 403
    assert tenant_api.post("/api/tenants/", {"name": "x"}, format="json").status_code == 403


def _tenant_scoped_routes() -> list[str]:
    """Every URL pattern under /api/tenants/<tenant_id>/..., from the live URL configuration."""
    routes = []

    def walk(patterns, prefix=""):
        for p in patterns:
            if hasattr(p, "url_patterns"):
                walk(p.url_patterns, prefix + str(p.pattern))
            else:
                routes.append(prefix + str(p.pattern))

    walk(get_resolver().url_patterns)
    return sorted({r for r in routes if "tenant_id" in r})


def _fill(route: str, tenant_id: str) -> str:
    import re

    path = route.lstrip("^").rstrip("$")
    path = re.sub(r"\(\?P<tenant_id>[^)]*\)|<uuid:tenant_id>", tenant_id, path)
    path = re.sub(r"\(\?P<[a-z_]+>[^)]*\)(\?)?", "x1", path)
    path = re.sub(r"<uuid:[a-z_]+>", str(uuid.uuid4()), path)
    path = re.sub(r"<int:[a-z_]+>", "1", path)
    path = re.sub(r"<(?:str:|slug:)?[a-z_]+>", "x1", path)
    path = path.replace("\\", "").replace("/?", "/")
    return "/" + path


def test_another_tenants_key_gets_404_on_every_tenant_endpoint(tenant, other_tenant, api_for):
    intruder = api_for(other_tenant)
    routes = _tenant_scoped_routes()
    assert len(routes) >= 5, routes

    answers = {}
    for route in routes:
        url = _fill(route, str(tenant.pk))
        for method in ("get", "post", "put", "patch", "delete"):
            response = getattr(intruder, method)(url, {}, format="json")
            if response.status_code != 405:
                answers[(method, url)] = response.status_code

    assert answers, "no endpoint answered"
    assert {k: v for k, v in answers.items() if v != 404} == {}
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_unknown_tenant_and_another_tenant_look_the_same(tenant, other_tenant, api_for):
    client = api_for(other_tenant)
    foreign = client.get(f"/api/tenants/{tenant.pk}/")
    missing = client.get(f"/api/tenants/{uuid.uuid4()}/")

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


def test_api_keys_are_stored_only_as_hashes_and_shown_once(tenant, tenant_api, pg_dump_text):
    created = tenant_api.post(f"/api/tenants/{tenant.pk}/api-keys/", {"name": "ci"}, format="json")
    raw = created.json()["key"]
    listed = tenant_api.get(f"/api/tenants/{tenant.pk}/api-keys/").json()["results"]

    assert created.status_code == 201
    assert all("key" not in item for item in listed)
    assert {item["prefix"] for item in listed} >= {raw[:12]}
    dump = pg_dump_text()
    assert raw not in dump
    assert raw[12:] not in dump
    assert ApiKey.objects.get(prefix=raw[:12]).key_hash != raw


def test_revoked_key_stops_working_and_others_keep_working(tenant, tenant_api, api_for):
    victim = api_for(tenant)
    victim_id = ApiKey.objects.for_tenant(tenant).order_by("-created_at").first().pk

    revoked = tenant_api.delete(f"/api/tenants/{tenant.pk}/api-keys/{victim_id}/")

    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert victim.get(f"/api/tenants/{tenant.pk}/").status_code == 401
    assert tenant_api.get(f"/api/tenants/{tenant.pk}/").status_code == 200
    assert Event.objects.for_tenant(tenant).filter(type="api_key.revoked").count() == 1


def test_key_use_is_recorded(tenant, tenant_api):
    tenant_api.get(f"/api/tenants/{tenant.pk}/")

    assert ApiKey.objects.for_tenant(tenant).filter(last_used_at__isnull=False).count() == 1


def test_inactive_tenant_keys_are_refused(tenant, tenant_api):
    services.tenant_update(tenant=tenant, is_active=False)

    assert tenant_api.get(f"/api/tenants/{tenant.pk}/").status_code == 401


def test_rate_limit_answers_429_with_retry_after(tenant, tenant_api, other_tenant, api_for):
    services.tenant_update(tenant=tenant, rate_limit_per_minute=3)
    statuses = [tenant_api.get(f"/api/tenants/{tenant.pk}/").status_code for _ in range(10)]
    limited = tenant_api.get(f"/api/tenants/{tenant.pk}/")
    neighbour = api_for(other_tenant).get(f"/api/tenants/{other_tenant.pk}/")

    assert statuses.count(429) >= 5
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert limited.json()["error"]["code"] == "rate_limited"
    assert neighbour.status_code == 200  # limits are per tenant


def test_settings_update_merges_and_validates_each_field(tenant, tenant_api):
    ok = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/", {"settings": {"ragConfig": {"topK": 8}, "tone": "formal"}}, format="json"
    )
    bad = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/",
        {"settings": {"ragConfig": {"topK": 0, "hybridWeights": {"keyword": 2}}, "locale": ["english!"], "x": 1}},
        format="json",
    )

    assert ok.status_code == 200
    assert ok.json()["settings"]["ragConfig"]["topK"] == 8
    assert ok.json()["settings"]["ragConfig"]["hybridWeights"] == {"keyword": 0.3, "vector": 0.7}
    assert ok.json()["settings"]["tone"] == "formal"
    assert bad.status_code == 400
    details = bad.json()["error"]["details"]
    assert set(details) == {
        "settings.ragConfig.topK",
        "settings.ragConfig.hybridWeights.keyword",
        "settings.locale",
        "settings.x",
    }
    tenant.refresh_from_db()
    assert tenant.settings["ragConfig"]["topK"] == 8  # the invalid update changed nothing


def test_only_the_admin_key_changes_activity_and_limits(tenant, tenant_api, admin_api):
    refused = tenant_api.patch(f"/api/tenants/{tenant.pk}/", {"rate_limit_per_minute": 5}, format="json")
    accepted = admin_api.patch(f"/api/tenants/{tenant.pk}/", {"rate_limit_per_minute": 5}, format="json")

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert accepted.json()["rate_limit_per_minute"] == 5


def test_deleting_a_tenant_removes_its_rows_and_files_only(tenant, other_tenant, admin_api, tenant_api):
    mine = default_storage.save(f"{tenant.pk}/documents/a/notes.txt", ContentFile(b"hello"))
    theirs = default_storage.save(f"{other_tenant.pk}/documents/notes.txt", ContentFile(b"keep me"))
    emit(tenant=tenant, type=EventType.TENANT_UPDATED, payload={})
    emit(tenant=other_tenant, type=EventType.TENANT_UPDATED, payload={})

    refused = tenant_api.delete(f"/api/tenants/{tenant.pk}/")
    response = admin_api.delete(f"/api/tenants/{tenant.pk}/")

    assert refused.status_code == 403
    assert response.status_code == 204
    assert not Tenant.objects.filter(pk=tenant.pk).exists()
    assert ApiKey.objects.filter(tenant_id=tenant.pk).count() == 0
    assert Event.objects.filter(tenant_id=tenant.pk).count() == 0
    assert not default_storage.exists(mine)
    assert default_storage.exists(theirs)
    assert Event.objects.filter(tenant_id=other_tenant.pk).count() == 1
    default_storage.delete(theirs)


def test_audit_log_filters_by_type_and_time_and_paginates(tenant, tenant_api, other_tenant):
    for i in range(3):
        emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"i": i})
    emit(tenant=tenant, type=EventType.DOCUMENT_INDEXED, payload={})
    emit(tenant=other_tenant, type=EventType.MESSAGE_RECEIVED, payload={"secret": "theirs"})

    received = tenant_api.get(f"/api/tenants/{tenant.pk}/events/?type=message.received&page_size=2").json()
    future = tenant_api.get(f"/api/tenants/{tenant.pk}/events/?since=2999-01-01T00:00:00Z").json()
    bad = tenant_api.get(f"/api/tenants/{tenant.pk}/events/?type=nope")

    assert received["count"] == 3
    assert [e["payload"]["i"] for e in received["results"]] == [2, 1]
    assert received["next"] is not None
    assert future["count"] == 0
    assert bad.status_code == 400


def test_unknown_api_path_answers_a_json_404(client):
    response = client.get("/api/nothing-here/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_request_id_is_echoed_or_generated(client):
    given = client.get("/api/health", HTTP_X_REQUEST_ID="req-123")
    generated = client.get("/api/health")

    assert given["X-Request-ID"] == "req-123"
    assert len(generated["X-Request-ID"]) == 32


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/")

    assert schema.status_code == 200
    assert b"/api/tenants/{tenant_id}/api-keys/" in schema.content
    assert docs.status_code == 200
