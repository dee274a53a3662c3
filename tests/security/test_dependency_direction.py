"""Issue #18, dependencies that point the wrong way: each app owns its own rows and its own figures.

The base (tenants, config) knows no app above it; behaviour seen from outside stays the same."""

from __future__ import annotations

import pytest
from django.conf import settings

from channels_app.models import Channel, ChannelSecret
from channels_app.secrets import channel_secret_set, with_channel_secret
from conversations.models import Contact, Conversation
from tenants import secrets
from tenants.models import TenantSecret


def sealed_as_before(plaintext: bytes, aad: bytes) -> dict[str, str]:
    """What the code before issue #18 stored: AES-GCM over the plaintext with this associated data,
    spelled out here so that a change of the associated data cannot go unnoticed."""
    sealed = secrets.seal(plaintext, aad=aad)
    return {"ciphertext": sealed.ciphertext, "iv": sealed.iv, "tag": sealed.tag, "key_id": sealed.key_id}


@pytest.mark.django_db
def test_rows_written_before_the_move_still_decrypt_and_merge(tenant):
    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id="7002")
    ChannelSecret.objects.create(
        tenant=tenant,
        channel=channel,
        **sealed_as_before(
            b'{"app_secret": "old-app", "access_token": "old-tok"}', f"channel-secret|{channel.pk}".encode()
        ),
    )
    TenantSecret.objects.create(
        tenant=tenant, name="openai", **sealed_as_before(b"sk-old", f"tenant-secret|{tenant.pk}|openai".encode())
    )

    channel_secret_set(channel=channel, values={"access_token": "new-tok"})

    assert with_channel_secret(channel=channel, fn=dict) == {"app_secret": "old-app", "access_token": "new-tok"}
    assert secrets.with_tenant_secret(tenant=tenant, name="openai", fn=lambda value: value) == "sk-old"


@pytest.mark.django_db
def test_each_apps_gauge_is_exposed_under_its_own_name(client, tenant):
    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id="7001")
    contact = Contact.objects.create(tenant=tenant, channel=channel, external_id="972500000001")
    Conversation.objects.create(tenant=tenant, channel=channel, contact=contact, state="handoff_requested")

    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ADMIN_API_KEY}").content.decode()

    assert "# TYPE metachat_inbound_events gauge" in body
    assert "# TYPE metachat_conversations gauge" in body
    assert 'metachat_conversations{state="handoff_requested"} 1' in body
    assert "# TYPE metachat_event_log_rows gauge" in body
    assert "metachat_event_log_rows 0.0" in body
