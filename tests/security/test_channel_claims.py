"""Finding 14: id squatting. A tenant could register another business's WhatsApp phone number id or
Messenger page id first and block its real owner, and the 409 confirmed the id existed elsewhere.
Now Meta's Graph API (a local server here that answers like Meta: an object is readable only with its
owner's token) must confirm the claimant's own token before a channel takes the id."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from channels_app import services
from channels_app.adapters.meta import sign
from channels_app.models import Channel, InboundEvent
from events.models import Event
from tests.channels_app.conftest import fixture_bytes
from tests.conversations.servers import JsonHandler

PHONE_ID = "1122334455667"  # the number in tests/fixtures/whatsapp/*.json
OTHER_PHONE_ID = "5550001112223"
PAGE_ID = "106543210987654"
OTHER_PAGE_ID = "106543210000001"
OWNER_TOKEN = "EAAowner-of-the-number"
SQUATTER_TOKEN = "EAAsquatter-own-business"
PAGE_TOKEN = "EAApage-token-of-106543210987654"
OTHER_PAGE_TOKEN = "EAApage-token-of-106543210000001"


class FakeGraph:
    """Meta's object reads: a WhatsApp number answers only to its business's tokens, ``/me`` with a page
    token answers that page, anything else Meta's error 100 (or 190 for a token it does not know)."""

    def __init__(self) -> None:
        self.numbers: dict[str, set[str]] = {PHONE_ID: {OWNER_TOKEN}, OTHER_PHONE_ID: {SQUATTER_TOKEN}}
        self.pages: dict[str, str] = {PAGE_TOKEN: PAGE_ID, OTHER_PAGE_TOKEN: OTHER_PAGE_ID}
        self.known_tokens = {OWNER_TOKEN, SQUATTER_TOKEN, PAGE_TOKEN, OTHER_PAGE_TOKEN}
        self.failing = False
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


@pytest.fixture
def graph(local_http_server: Callable[..., Any], settings: Any) -> FakeGraph:
    fake = FakeGraph()

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            node = parts.path.rsplit("/", 1)[1]
            with fake.lock:
                fake.requests.append({"path": parts.path, "query": parse_qs(parts.query), "token": token})
            if fake.failing:
                return self._json(503, {"error": {"message": "Service temporarily unavailable", "code": 2}})
            if token not in fake.known_tokens:
                return self._json(401, {"error": {"message": "Invalid OAuth access token.", "code": 190}})
            if node == "me" and token in fake.pages:
                return self._json(200, {"id": fake.pages[token], "name": "A page"})
            if token in fake.numbers.get(node, set()):
                return self._json(200, {"id": node, "display_phone_number": "+1 555 000 1111", "verified_name": "X"})
            return self._json(
                400,
                {
                    "error": {
                        "message": f"Unsupported get request. Object with ID '{node}' does not exist, cannot be "
                        "loaded due to missing permissions, or does not support this operation.",
                        "type": "GraphMethodException",
                        "code": 100,
                        "error_subcode": 33,
                    }
                },
            )

    running = local_http_server(Handler)
    settings.GRAPH_API_BASE_URL = running.url
    settings.GRAPH_API_VERSION = "v25.0"
    settings.GRAPH_API_MAX_ATTEMPTS = 2
    settings.GRAPH_API_BACKOFF_BASE = 0.01
    settings.GRAPH_API_BACKOFF_MAX = 0.02
    return fake


@pytest.fixture(autouse=True)
def _fresh_route_cache() -> None:
    services.clear_route_cache()


def create(api: Any, tenant: Any, *, type: str = "whatsapp", external_id: str = PHONE_ID, token: str = OWNER_TOKEN):
    credentials = {"app_secret": f"secret-of-{tenant.pk}", "verify_token": "vt"}
    if token:
        credentials["access_token"] = token
    return api.post(
        f"/api/tenants/{tenant.pk}/channels/",
        {"type": type, "name": "Line", "external_id": external_id, "credentials": credentials},
        format="json",
    )


def test_a_tenant_cannot_take_a_phone_number_id_its_token_cannot_read(tenant, tenant_api, graph):
    response = create(tenant_api, tenant, token=SQUATTER_TOKEN)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert list(response.json()["error"]["details"]) == ["external_id"]
    assert not Channel.objects.filter(external_id=PHONE_ID).exists()
    assert graph.requests == [
        {
            "path": f"/v25.0/{PHONE_ID}",
            "query": {"fields": ["id,display_phone_number,verified_name"]},
            "token": SQUATTER_TOKEN,
        }
    ]


def test_the_refusal_says_nothing_about_whether_another_tenant_holds_the_id(
    tenant, other_tenant, tenant_api, api_for, graph
):
    assert create(tenant_api, tenant).status_code == 201  # the owner's channel
    squatter = api_for(other_tenant)
    graph.numbers["9990001112223"] = {OWNER_TOKEN}  # a number nobody on the platform uses

    held = create(squatter, other_tenant, token=SQUATTER_TOKEN)
    free = create(squatter, other_tenant, external_id="9990001112223", token=SQUATTER_TOKEN)
    no_token = create(squatter, other_tenant, token="")

    assert (held.status_code, free.status_code, no_token.status_code) == (400, 400, 400)
    assert held.json()["error"]["message"].replace(PHONE_ID, "N") == free.json()["error"]["message"].replace(
        "9990001112223", "N"
    )
    assert "already" not in json.dumps([held.json(), free.json(), no_token.json()])
    assert list(no_token.json()["error"]["details"]) == ["credentials.access_token"]


def test_the_verified_owner_takes_its_number_back_from_a_squatter(tenant, other_tenant, api_for, graph, client):
    # Registered before ids were claimed (no check): the squatter's own token cannot read this number.
    squatted = services.channel_create(
        tenant=other_tenant,
        type="whatsapp",
        name="Squatted",
        external_id=PHONE_ID,
        credentials={"app_secret": "squatter-secret", "access_token": SQUATTER_TOKEN},
    )

    response = create(api_for(tenant), tenant)

    assert response.status_code == 201
    squatted.refresh_from_db()
    assert (squatted.external_id, squatted.is_active) == ("", False)
    assert "claimed by a business whose Meta token can read it" in squatted.sending_disabled_reason
    disabled = Event.objects.for_tenant(other_tenant).get(type="channel.disabled")
    assert disabled.payload["channel_id"] == str(squatted.pk)
    # Meta's next message for the number reaches its owner's channel, signed with the owner's app secret.
    body = fixture_bytes("whatsapp", "text")
    delivered = client.generic(
        "POST",
        "/webhooks/whatsapp",
        body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=sign(body, f"secret-of-{tenant.pk}", "sha256"),
    )
    assert delivered.status_code == 200
    assert InboundEvent.objects.filter(channel_id=response.json()["id"], kind="message").count() == 1
    assert not InboundEvent.objects.filter(channel=squatted).exists()


def test_when_meta_vouches_for_both_tenants_the_id_stays_and_support_decides(
    tenant, other_tenant, tenant_api, api_for, graph
):
    first = create(tenant_api, tenant)
    graph.numbers[PHONE_ID].add(SQUATTER_TOKEN)  # the business gave both tenants a token

    second = create(api_for(other_tenant), other_tenant, token=SQUATTER_TOKEN)

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["error"] == {
        "code": "conflict",
        "message": "this phone number id cannot be used; contact support",
        "details": {"external_id": ["this phone number id cannot be used; contact support"]},
    }
    assert Channel.objects.get(external_id=PHONE_ID).tenant_id == tenant.pk


def test_a_messenger_page_is_taken_only_with_that_pages_own_token(tenant, tenant_api, graph):
    other_pages_token = create(tenant_api, tenant, type="messenger", external_id=PAGE_ID, token=OTHER_PAGE_TOKEN)
    own_token = create(tenant_api, tenant, type="messenger", external_id=PAGE_ID, token=PAGE_TOKEN)

    assert other_pages_token.status_code == 400
    assert own_token.status_code == 201
    assert [(r["path"], r["query"], r["token"]) for r in graph.requests] == [
        ("/v25.0/me", {"fields": ["id,name"]}, OTHER_PAGE_TOKEN),
        ("/v25.0/me", {"fields": ["id,name"]}, PAGE_TOKEN),
    ]


def test_changing_a_channels_id_is_claimed_the_same_way(tenant, tenant_api, graph):
    channel_id = create(tenant_api, tenant).json()["id"]
    url = f"/api/tenants/{tenant.pk}/channels/{channel_id}/"

    refused = tenant_api.patch(url, {"external_id": OTHER_PHONE_ID}, format="json")  # stored token cannot read it
    taken = tenant_api.patch(
        url, {"external_id": OTHER_PHONE_ID, "credentials": {"access_token": SQUATTER_TOKEN}}, format="json"
    )
    not_a_number = tenant_api.patch(url, {"external_id": "../me/messages"}, format="json")

    assert refused.status_code == 400 and list(refused.json()["error"]["details"]) == ["external_id"]
    assert taken.status_code == 200 and taken.json()["external_id"] == OTHER_PHONE_ID
    assert not_a_number.status_code == 400
    assert Channel.objects.get(pk=channel_id).external_id == OTHER_PHONE_ID
    assert [r["token"] for r in graph.requests] == [OWNER_TOKEN, OWNER_TOKEN, SQUATTER_TOKEN]


def test_graph_api_down_answers_503_and_takes_nothing(tenant, tenant_api, graph):
    graph.failing = True

    response = create(tenant_api, tenant)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "graph_api_unavailable"
    assert not Channel.objects.filter(external_id=PHONE_ID).exists()


def test_tenant_staff_claim_ids_in_the_admin_as_in_the_api(tenant, client, graph):
    from tenants.services import staff_user_create

    owner, _ = staff_user_create(tenant=tenant, username="owner", role="owner", password="pw-123456789")
    client.force_login(owner)
    form = {"type": "whatsapp", "name": "Line", "is_active": "on", "config": "{}", "app_secret": "", "verify_token": ""}

    squatting = client.post(
        "/admin/channels_app/channel/add/", {**form, "external_id": PHONE_ID, "access_token": SQUATTER_TOKEN}
    )
    owning = client.post(
        "/admin/channels_app/channel/add/", {**form, "external_id": PHONE_ID, "access_token": OWNER_TOKEN}
    )

    assert squatting.status_code == 200 and "Meta did not confirm" in squatting.content.decode()
    assert owning.status_code == 302
    assert Channel.objects.get(external_id=PHONE_ID).tenant_id == tenant.pk
