"""Admin: write-only credentials, tenant scoping, unrouted webhooks for superusers only."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from channels_app.models import UnroutedWebhook
from channels_app.secrets import with_channel_secret
from tenants.services import staff_user_create
from tests.channels_app.conftest import WA_SECRET, WA_TOKEN


def owner_client(client, tenant, username="owner"):
    user, _ = staff_user_create(tenant=tenant, username=username, role="owner", password="pw-123456789")
    client.force_login(user)
    return client


def test_change_form_never_shows_credentials(wa_channel, client):
    page = owner_client(client, wa_channel.tenant).get(f"/admin/channels_app/channel/{wa_channel.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert WA_SECRET not in html and WA_TOKEN not in html and "wa-verify-token" not in html
    assert "access_token, app_secret, verify_token" in html  # names only


def test_saving_a_credential_keeps_the_others_and_empty_fields_change_nothing(wa_channel, client):
    owner = owner_client(client, wa_channel.tenant)
    response = owner.post(
        f"/admin/channels_app/channel/{wa_channel.pk}/change/",
        {
            "type": "whatsapp",
            "name": "Support line",
            "is_active": "on",
            "external_id": wa_channel.external_id,
            "config": "{}",
            "app_secret": "",
            "access_token": "EAArotated",
            "verify_token": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    values = with_channel_secret(channel=wa_channel, fn=dict)
    assert (values["access_token"], values["app_secret"], values["verify_token"]) == (
        "EAArotated",
        WA_SECRET,
        "wa-verify-token",
    )


def test_disabled_sending_is_shown_in_the_channel_list(wa_channel, client):
    from channels_app import services

    services.channel_disable_sending(channel=wa_channel, reason="access token invalid or expired (190)")
    html = owner_client(client, wa_channel.tenant).get("/admin/channels_app/channel/").content.decode()
    assert "disabled: access token invalid or expired (190)" in html


def test_other_tenants_channel_answers_404_in_the_admin(wa_channel, other_tenant, client):
    owner = owner_client(client, other_tenant, username="globex-owner")
    assert owner.get(f"/admin/channels_app/channel/{wa_channel.pk}/change/").status_code in (302, 404)
    assert wa_channel.name not in owner.get("/admin/channels_app/channel/").content.decode()


def test_unrouted_webhooks_are_for_superusers_only(wa_channel, client):
    kept = UnroutedWebhook.objects.create(platform="whatsapp", reason="unknown ids", external_ids=["1"], body="{}")
    owner = owner_client(client, wa_channel.tenant)
    assert owner.get(f"/admin/channels_app/unroutedwebhook/{kept.pk}/change/").status_code in (302, 403, 404)
    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(superuser)
    assert client.get(f"/admin/channels_app/unroutedwebhook/{kept.pk}/change/").status_code == 200
