"""Finding 5: "write-only" secrets were readable. ``llm.apiKeySecret`` could name the platform's own
secrets (a webhook's signing secret or header values, a function's signing secret), which the LLM
client then sent as a Bearer token to the tenant's URL; the generic secrets API overwrote and deleted
them; a reference to a missing secret was accepted and failed only at turn time. Driven as the tenant
did it: through the API with the tenant's key."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tenants import secrets
from tenants.models import Tenant
from tests.tenants.test_admin_settings_form import form_data

CANARY = "hdr-canary-0c9e4d1f"


@pytest.fixture(autouse=True)
def _private_targets(settings: Any) -> None:
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True  # the receivers here listen on 127.0.0.1


@pytest.fixture
def receiver(local_http_server: Any) -> Any:
    """A tenant's HTTP endpoint that records what reaches it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append({"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

    running = local_http_server(Handler)
    running.received = received
    return running


@pytest.fixture
def webhook(tenant: Tenant, tenant_api: Any, receiver: Any) -> dict[str, Any]:
    created = tenant_api.post(
        f"/api/tenants/{tenant.pk}/webhooks/",
        {"url": receiver.url + "/hook", "event_types": ["message.received"], "headers": {"X-Token": CANARY}},
        format="json",
    )
    assert created.status_code == 201
    return created.json()


def test_settings_cannot_name_the_platforms_own_secrets(tenant, tenant_api, webhook, receiver):
    function = tenant_api.post(
        f"/api/tenants/{tenant.pk}/functions/",
        {"name": "lookup", "description": "Look up an order", "endpoint_url": receiver.url + "/fn"},
        format="json",
    )
    assert function.status_code == 201
    before = Tenant.objects.get(pk=tenant.pk).settings
    attempts = {
        "llm": f"webhook.{webhook['id']}.headers",
        "embedding": f"webhook.{webhook['id']}.signing",
    }

    answers = [
        tenant_api.patch(
            f"/api/tenants/{tenant.pk}/",
            {
                "settings": {
                    section: {
                        "provider": "openai_compatible",
                        "model": "m",
                        "baseUrl": receiver.url + "/v1",
                        "apiKeySecret": name,
                    }
                }
            },
            format="json",
        )
        for section, name in [*attempts.items(), ("llm", "function.lookup.signing"), ("llm", "Webhook.x.signing")]
    ]

    assert [a.status_code for a in answers] == [400, 400, 400, 400]
    assert [list(a.json()["error"]["details"]) for a in answers] == [
        ["settings.llm.apiKeySecret"],
        ["settings.embedding.apiKeySecret"],
        ["settings.llm.apiKeySecret"],
        ["settings.llm.apiKeySecret"],
    ]
    assert (
        "reserved for the platform's own webhook and function signing secrets"
        in (answers[0].json()["error"]["details"]["settings.llm.apiKeySecret"][0])
    )
    assert Tenant.objects.get(pk=tenant.pk).settings == before
    assert receiver.received == []


def test_the_secrets_api_cannot_overwrite_delete_or_list_internal_secrets(tenant, tenant_api, webhook):
    base = f"/api/tenants/{tenant.pk}/secrets/"
    headers_name = f"webhook.{webhook['id']}.headers"
    signing_name = f"webhook.{webhook['id']}.signing"
    signing_before = secrets.with_tenant_secret(tenant=tenant, name=signing_name, fn=lambda v: v)

    answers = [
        tenant_api.put(base + headers_name, {"value": '{"X-Token": "hijacked"}'}, format="json"),
        tenant_api.put(base + signing_name, {"value": "whsec_mine"}, format="json"),
        tenant_api.delete(base + headers_name),
        tenant_api.delete(base + signing_name),
        tenant_api.put(base + "function.lookup.signing", {"value": "x"}, format="json"),  # does not exist: same
        tenant_api.delete(base + "WEBHOOK.anything"),
    ]

    assert [a.status_code for a in answers] == [403] * 6
    assert {a.json()["error"]["code"] for a in answers} == {"reserved_secret_name"}
    assert secrets.with_tenant_secret(tenant=tenant, name=headers_name, fn=json.loads) == {"X-Token": CANARY}
    assert secrets.with_tenant_secret(tenant=tenant, name=signing_name, fn=lambda v: v) == signing_before
    assert tenant_api.get(base).json()["results"] == []
    detail = tenant_api.get(f"/api/tenants/{tenant.pk}/webhooks/{webhook['id']}/").json()
    assert detail["header_names"] == ["X-Token"]


def test_a_setting_naming_a_missing_secret_is_refused_when_saved(tenant, tenant_api, admin_api):
    update = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/",
        {"settings": {"llm": {"provider": "openai", "apiKeySecret": "not-there"}}},
        format="json",
    )
    create = admin_api.post(
        "/api/tenants/", {"name": "New", "settings": {"embedding": {"apiKeySecret": "k"}}}, format="json"
    )

    assert update.status_code == 400
    assert update.json()["error"]["details"] == {
        "settings.llm.apiKeySecret": ["the tenant has no secret named 'not-there'"]
    }
    assert create.status_code == 400
    assert create.json()["error"]["details"] == {
        "settings.embedding.apiKeySecret": ["the tenant has no secret named 'k'"]
    }
    assert Tenant.objects.get(pk=tenant.pk).settings["llm"]["apiKeySecret"] == ""
    assert not Tenant.objects.filter(name="New").exists()


def test_a_secret_named_by_the_settings_cannot_be_deleted_until_the_setting_changes(tenant, tenant_api):
    url = f"/api/tenants/{tenant.pk}/secrets/llm-key"
    assert tenant_api.put(url, {"value": "sk-tenant"}, format="json").status_code == 201
    named = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/",
        {"settings": {"llm": {"provider": "openai", "apiKeySecret": "llm-key"}}},
        format="json",
    )
    assert named.status_code == 200

    refused = tenant_api.delete(url)
    tenant_api.patch(f"/api/tenants/{tenant.pk}/", {"settings": {"llm": {"apiKeySecret": ""}}}, format="json")
    deleted = tenant_api.delete(url)

    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "secret_in_use",
        "message": "secret 'llm-key' is used by settings.llm.apiKeySecret; change that setting first",
        "details": {"used_by": ["settings.llm.apiKeySecret"]},
    }
    assert deleted.status_code == 204
    assert not secrets.tenant_secret_exists(tenant=tenant, name="llm-key")


def test_a_function_cannot_send_an_internal_secret_as_its_auth_header(tenant, tenant_api, webhook, receiver):
    response = tenant_api.post(
        f"/api/tenants/{tenant.pk}/functions/",
        {
            "name": "exfiltrate",
            "description": "Sends the webhook headers secret to the tenant's own endpoint",
            "endpoint_url": receiver.url + "/fn",
            "auth_header_name": "X-Leak",
            "auth_secret_name": f"webhook.{webhook['id']}.headers",
        },
        format="json",
    )

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == ["auth_secret_name"]


def test_the_admin_refuses_internal_names_and_hides_internal_secrets(client, tenant, webhook):
    from tenants.services import staff_user_create

    owner, _ = staff_user_create(tenant=tenant, username="owner", role="owner", password="pw-123456789")
    client.force_login(owner)

    listing = client.get("/admin/tenants/tenantsecret/").content.decode()
    added = client.post(
        "/admin/tenants/tenantsecret/add/", {"tenant": str(tenant.pk), "name": "webhook.x.signing", "value": "v"}
    )
    change = f"/admin/tenants/tenant/{tenant.pk}/change/"
    page = client.get(change)
    offered = dict(page.context["adminform"].form.fields["llm_api_key_secret"].choices)
    internal = f"webhook.{webhook['id']}.headers"
    settings_form = client.post(change, form_data(page, llm_api_key_secret=internal))

    assert f"webhook.{webhook['id']}" not in listing
    assert added.status_code == 200 and "reserved for the platform" in added.content.decode()
    assert not secrets.tenant_secret_exists(tenant=tenant, name="webhook.x.signing")
    # The settings form offers the tenant's own secrets only, and refuses an internal name typed in.
    assert not [name for name in offered if str(name).startswith(("webhook.", "function."))]
    assert settings_form.status_code == 200
    assert "llm_api_key_secret" in settings_form.context["adminform"].form.errors
    assert Tenant.objects.get(pk=tenant.pk).settings["llm"]["apiKeySecret"] == ""
