"""Issue #18, dependencies that point the wrong way: each app owns its own rows and its own figures.

The base (tenants, config) knows no app above it; behaviour seen from outside stays the same."""

from __future__ import annotations

import pytest
from django.conf import settings

from channels_app.models import Channel
from conversations.models import Contact, Conversation


@pytest.mark.django_db
def test_each_apps_gauge_is_exposed_under_its_own_name(client, tenant):
    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id="7001")
    contact = Contact.objects.create(tenant=tenant, channel=channel, external_id="972500000001")
    Conversation.objects.create(tenant=tenant, channel=channel, contact=contact, state="handoff_requested")

    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ADMIN_API_KEY}").content.decode()

    assert "# TYPE metachat_inbound_events gauge" in body
    assert "# TYPE metachat_conversations gauge" in body
    assert 'metachat_conversations{state="handoff_requested"} 1' in body
    assert "# TYPE metachat_events_total_rows gauge" in body
    assert "metachat_events_total_rows 0" in body
