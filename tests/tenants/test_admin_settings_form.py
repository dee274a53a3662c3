"""The tenant's settings in the admin are a form of fields validated by the API's schema: what an owner
saves there is what the assistant uses in its next reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from config.openai_clients import reset_clients
from events.models import Event
from tenants import services
from tenants.models import Tenant
from tests.conftest import wait_until
from tests.conversations.conftest import deliver, make_whatsapp
from tests.conversations.servers import GraphRecorder, graph_handler


def logged_in(tenant: Tenant, role: str = "owner") -> Client:
    user, _ = services.staff_user_create(
        tenant=tenant, username=f"{role}-{tenant.slug}", role=role, password="pw-12345678"
    )
    client = Client()
    client.force_login(user)
    return client


def superuser_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-12345678"))
    return client


def form_data(page: Any, **changes: Any) -> dict[str, Any]:
    """What a browser submits for the change form as shown, with ``changes`` typed in."""
    form = page.context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if getattr(field.widget, "input_type", None) == "checkbox":
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else value
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def change_url(tenant: Tenant) -> str:
    return f"/admin/tenants/tenant/{tenant.pk}/change/"


def test_owner_sees_a_field_per_setting_with_help_and_no_json_box(tenant):
    page = logged_in(tenant).get(change_url(tenant))

    assert page.status_code == 200
    html = page.content.decode()
    form = page.context["adminform"].form
    for name in ("brand_name", "tone", "locale", "enable_rag", "human_handoff_keywords", "rag_top_k", "rag_fusion",
                 "llm_provider", "llm_api_key_secret", "embedding_provider", "embedding_model"):  # fmt: skip
        assert f'name="{name}"' in html, name
    assert form["brand_name"].value() == "Your Business"
    assert form["human_handoff_keywords"].value() == "human\nagent\nhelp"
    assert "How many document passages the assistant reads per question" in html
    assert 'name="settings"' not in html and 'name="settings_json"' not in html


def test_invalid_retrieval_settings_show_the_schema_error_on_their_field(tenant):
    client = logged_in(tenant)
    page = client.get(change_url(tenant))

    top_k = client.post(change_url(tenant), form_data(page, rag_top_k="0"))
    weights = client.post(change_url(tenant), form_data(page, rag_keyword_weight="0", rag_vector_weight="0"))
    locale = client.post(change_url(tenant), form_data(page, locale="en, not a tag"))

    assert top_k.status_code == 200
    assert top_k.context["adminform"].form.errors == {"rag_top_k": ["Input should be greater than or equal to 1"]}
    assert 'class="form-row errors field-rag_top_k"' in top_k.content.decode()
    assert weights.context["adminform"].form.errors == {
        "rag_keyword_weight": ["at least one of keyword and vector must be above 0"]
    }
    assert locale.context["adminform"].form.errors == {
        "locale": ["'not a tag' is not a language tag such as 'en' or 'pt-BR'"]
    }
    tenant.refresh_from_db()
    assert tenant.settings["ragConfig"]["topK"] == 5


def test_conversation_categories_are_lines_of_name_and_description(tenant):
    client = logged_in(tenant)
    page = client.get(change_url(tenant))

    twice = client.post(change_url(tenant), form_data(page, categories="Shipping: parcels\nshipping: again"))
    saved = client.post(
        change_url(tenant),
        form_data(page, categories="Shipping: delivery times, tracking\n\nReturns:refunds and exchanges\nBilling"),
    )

    assert twice.context["adminform"].form.errors == {"categories": ["category names must be different"]}
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert tenant.settings["categories"] == [
        {"name": "Shipping", "description": "delivery times, tracking"},
        {"name": "Returns", "description": "refunds and exchanges"},
        {"name": "Billing", "description": ""},
    ]
    shown = client.get(change_url(tenant)).context["adminform"].form.initial["categories"]
    assert shown == "Shipping: delivery times, tracking\nReturns: refunds and exchanges\nBilling"


def test_settings_saved_by_the_form_keep_what_the_form_does_not_show(tenant):
    stored = {**tenant.settings, "legacyWidget": {"x": 1}}
    stored["llm"] = {**stored["llm"], "oldOption": True}
    Tenant.objects.filter(pk=tenant.pk).update(settings=stored)
    client = logged_in(tenant)
    page = client.get(change_url(tenant))
    assert "Kept unchanged, not used by this version: legacyWidget, llm.oldOption." in page.content.decode()

    response = client.post(
        change_url(tenant),
        form_data(page, tone="formal", locale="pt-BR, en", human_handoff_keywords="atendente\nperson",
                  rag_fusion="rrf", enable_function_calling=False),
    )  # fmt: skip

    assert response.status_code == 302, response.context["adminform"].form.errors
    tenant.refresh_from_db()
    assert tenant.settings["tone"] == "formal"
    assert tenant.settings["locale"] == ["pt-BR", "en"]
    assert tenant.settings["humanHandoffKeywords"] == ["atendente", "person"]
    assert tenant.settings["ragConfig"]["fusion"] == "rrf"
    assert tenant.settings["enableFunctionCalling"] is False
    assert tenant.settings["legacyWidget"] == {"x": 1} and tenant.settings["llm"]["oldOption"] is True
    assert Event.objects.filter(tenant=tenant, type="tenant.updated").get().payload == {"fields": ["settings"]}


def test_secret_reference_must_be_one_of_the_tenants_secrets(tenant, other_tenant):
    from tenants.secrets import tenant_secret_set

    tenant_secret_set(tenant=tenant, name="openai-key", value="sk-1")
    tenant_secret_set(tenant=other_tenant, name="their-key", value="sk-2")
    client = logged_in(tenant)
    page = client.get(change_url(tenant))
    choices = [value for value, _ in page.context["adminform"].form.fields["llm_api_key_secret"].choices]
    assert choices == ["", "openai-key"]

    refused = client.post(change_url(tenant), form_data(page, llm_api_key_secret="their-key"))
    saved = client.post(change_url(tenant), form_data(page, llm_provider="openai", llm_api_key_secret="openai-key"))

    assert "llm_api_key_secret" in refused.context["adminform"].form.errors
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert tenant.settings["llm"] == {**tenant.settings["llm"], "provider": "openai", "apiKeySecret": "openai-key"}


def test_superuser_edits_the_settings_as_json_or_the_form_not_both(tenant):
    client = superuser_client()
    page = client.get(change_url(tenant))
    assert 'name="settings_json"' in page.content.decode()
    edited = {**tenant.settings, "brandName": "From JSON"}
    import json

    both = client.post(change_url(tenant), form_data(page, tone="calm", settings_json=json.dumps(edited)))
    bad = client.post(change_url(tenant), form_data(page, settings_json=json.dumps({**edited, "tone": 3})))
    saved = client.post(change_url(tenant), form_data(page, settings_json=json.dumps(edited)))

    assert "change one of them" in both.context["adminform"].form.errors["settings_json"][0]
    assert bad.context["adminform"].form.errors == {"settings_json": ["Input should be a valid string"]}
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.settings["brandName"], tenant.settings["tone"]) == ("From JSON", "friendly")


@pytest.fixture
def graph(local_http_server: Callable[..., Any], settings: Any) -> GraphRecorder:
    # As tests/conversations/conftest.py: no debounce, no deployment LLM, the Graph API is local.
    settings.TURN_DEBOUNCE_SECONDS = 0
    settings.LLM_MAX_RETRIES = 0
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    reset_clients()
    recorder = GraphRecorder()
    settings.GRAPH_API_BASE_URL = local_http_server(graph_handler(recorder)).url
    return recorder


def test_brand_name_saved_in_the_form_is_used_by_the_next_reply(live_worker, tenant, graph):
    whatsapp = make_whatsapp(tenant)
    client = logged_in(tenant)
    page = client.get(change_url(tenant))

    response = client.post(change_url(tenant), form_data(page, brand_name="Zephyr Bikes"))
    assert response.status_code == 302
    deliver(whatsapp, text="Do you repair volcanoes?")

    wait_until(lambda: graph.text_bodies())
    assert graph.text_bodies()[0].startswith("I couldn't find anything about that in Zephyr Bikes's documents.")


def test_superuser_adds_a_tenant_with_its_settings_from_the_form(db):
    client = superuser_client()
    page = client.get("/admin/tenants/tenant/add/")
    assert page.status_code == 200 and page.context["adminform"].form["brand_name"].value() == "Your Business"

    response = client.post(
        "/admin/tenants/tenant/add/",
        form_data(page, name="Initech", slug="initech", is_active="on", rate_limit_per_minute="",
                  brand_name="Initech Support", rag_top_k="8"),
    )  # fmt: skip

    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Tenant.objects.get(slug="initech")
    assert (created.settings["brandName"], created.settings["ragConfig"]["topK"]) == ("Initech Support", 8)
    assert created.settings["llm"] == {**created.settings["llm"], "provider": "default", "temperature": 0.3}
