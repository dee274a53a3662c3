"""/api/tenants/{id}/channels/: CRUD, write-only credentials, isolation."""

from __future__ import annotations

import pytest

from channels_app.models import Channel, ChannelSecret
from channels_app.secrets import with_channel_secret


@pytest.fixture(autouse=True)
def _graph_confirms_the_number(graph):
    """Channels take an id only once Meta confirms the token reads it (tests/security/test_channel_claims.py)."""
    graph.profiles["1122334455667"] = {"display_phone_number": "15550001111"}


def create_whatsapp(api, tenant, **overrides):
    body = {
        "type": "whatsapp",
        "name": "Support",
        "external_id": "1122334455667",
        "config": {"display_phone_number": "15550001111"},
        "credentials": {"app_secret": "s3cr3t-app", "access_token": "EAAtoken", "verify_token": "vt"},
        **overrides,
    }
    return api.post(f"/api/tenants/{tenant.pk}/channels/", body, format="json")


def test_create_channel_stores_credentials_encrypted_and_never_returns_them(tenant, tenant_api):
    response = create_whatsapp(tenant_api, tenant)
    assert response.status_code == 201
    body = response.json()
    assert body["type"] == "whatsapp" and body["external_id"] == "1122334455667"
    assert body["credentials_set"] == ["access_token", "app_secret", "verify_token"]
    assert body["webhook_url"].endswith("/webhooks/whatsapp")
    assert "s3cr3t-app" not in response.content.decode() and "EAAtoken" not in response.content.decode()
    secret = ChannelSecret.objects.get(channel_id=body["id"])
    assert "s3cr3t-app" not in secret.ciphertext
    channel = Channel.objects.get(pk=body["id"])
    assert with_channel_secret(channel=channel, fn=lambda c: c["app_secret"]) == "s3cr3t-app"


def test_list_and_read_channels(tenant, tenant_api):
    create_whatsapp(tenant_api, tenant)
    listing = tenant_api.get(f"/api/tenants/{tenant.pk}/channels/").json()
    assert [c["name"] for c in listing["results"]] == ["Support"]
    detail = tenant_api.get(f"/api/tenants/{tenant.pk}/channels/{listing['results'][0]['id']}/")
    assert detail.status_code == 200 and detail.json()["config"] == {"display_phone_number": "15550001111"}


def test_update_name_and_one_credential_keeps_the_others(tenant, tenant_api):
    channel_id = create_whatsapp(tenant_api, tenant).json()["id"]
    response = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/channels/{channel_id}/",
        {"name": "Sales", "credentials": {"access_token": "EAAnew"}},
        format="json",
    )
    assert response.status_code == 200 and response.json()["name"] == "Sales"
    channel = Channel.objects.get(pk=channel_id)
    assert with_channel_secret(channel=channel, fn=lambda c: (c["access_token"], c["app_secret"])) == (
        "EAAnew",
        "s3cr3t-app",
    )


def test_credentials_endpoint_is_write_only(tenant, tenant_api):
    channel_id = create_whatsapp(tenant_api, tenant, credentials={"access_token": "EAAtoken"}).json()["id"]
    url = f"/api/tenants/{tenant.pk}/channels/{channel_id}/credentials/"
    response = tenant_api.put(url, {"app_secret": "fresh"}, format="json")
    assert response.status_code == 200 and response.json()["credentials_set"] == ["access_token", "app_secret"]
    assert tenant_api.get(url).status_code == 405
    assert tenant_api.put(url, {}, format="json").status_code == 400


def test_whatsapp_channel_needs_its_phone_number_id(tenant, tenant_api):
    response = create_whatsapp(tenant_api, tenant, external_id="")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"external_id": ["a whatsapp channel needs its phone_number_id"]}


def test_a_phone_number_id_belongs_to_one_channel_across_tenants(tenant, other_tenant, tenant_api, api_for):
    assert create_whatsapp(tenant_api, tenant).status_code == 201
    response = create_whatsapp(api_for(other_tenant), other_tenant)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_another_tenants_channel_answers_404(tenant, other_tenant, tenant_api, api_for):
    channel_id = create_whatsapp(tenant_api, tenant).json()["id"]
    other = api_for(other_tenant)
    assert other.get(f"/api/tenants/{other_tenant.pk}/channels/{channel_id}/").status_code == 404
    assert other.get(f"/api/tenants/{tenant.pk}/channels/").status_code == 404
    assert other.delete(f"/api/tenants/{other_tenant.pk}/channels/{channel_id}/").status_code == 404
    assert Channel.objects.filter(pk=channel_id).exists()


def test_delete_channel(tenant, tenant_api):
    channel_id = create_whatsapp(tenant_api, tenant).json()["id"]
    assert tenant_api.delete(f"/api/tenants/{tenant.pk}/channels/{channel_id}/").status_code == 204
    assert not Channel.objects.filter(pk=channel_id).exists()
