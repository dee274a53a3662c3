"""One rate limiter for the platform (tenants.ratelimit: django-ratelimit on the Redis cache): the
per-tenant API limit and the new abuse limits count in the same place, obey the same switch, and key
clients the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from channels_app.models import Channel
from tenants import services
from tenants.models import Tenant
from tests.webchat import conftest as webchat_fixtures

pytestmark = pytest.mark.django_db

ORIGIN = "https://shop.example"


# The web chat tests' fixtures, bound here so pytest finds them (tests/security has no conftest).
make_webchat_channel = webchat_fixtures.make_webchat_channel


@pytest.fixture
def widget(tenant: Tenant, make_webchat_channel: Callable[..., Channel]) -> Channel:
    return make_webchat_channel(tenant, [ORIGIN])


def start_session(client: Any, widget: Channel, address: str) -> int:
    return client.post(
        "/api/webchat/sessions/",
        {"widget_key": widget.external_id},
        content_type="application/json",
        HTTP_ORIGIN=ORIGIN,
        REMOTE_ADDR=address,
    ).status_code


def test_one_switch_turns_every_limit_off_the_tenant_api_limit_included(client, tenant, tenant_api, widget, settings):
    """RATELIMIT_ENABLE (django-ratelimit's own switch) holds for all limits: one limiter, one switch."""
    services.tenant_update(tenant=tenant, rate_limit_per_minute=3)
    settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE = 3
    settings.RATELIMIT_ENABLE = False

    api = [tenant_api.get(f"/api/tenants/{tenant.pk}/").status_code for _ in range(8)]
    sessions = [start_session(client, widget, "203.0.113.60") for _ in range(8)]

    assert api == [200] * 8
    assert sessions == [201] * 8


def test_ipv6_clients_are_counted_per_64_not_per_address(client, widget, settings):
    """A host holds a whole /64: walking through its addresses must not buy it a new allowance."""
    settings.WEBCHAT_SESSIONS_PER_ADDRESS_PER_MINUTE = 2

    same_64 = [start_session(client, widget, f"2001:db8:1:2::{n:x}") for n in range(1, 6)]
    other_64 = start_session(client, widget, "2001:db8:1:3::1")

    assert same_64[:2] == [201, 201]
    assert 429 in same_64
    assert same_64.count(201) <= 4  # two fixed windows at most within the burst
    assert other_64 == 201
