"""Finding 13 (settings): ``topK: "5"`` was accepted, ``topK: true`` stored as 1, a 4 MB ``llm.model``
stored, and ``llm.baseUrl`` took anything (``javascript:alert(1)``). Settings are now validated strictly
when saved (no coercion, lengths, endpoint URLs under the egress rules) and read leniently, so settings
saved under older rules keep every tenant answering."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tenants.models import Tenant


@pytest.fixture
def patch_settings(tenant: Tenant, tenant_api: Any) -> Any:
    def patch(settings: dict[str, Any]) -> Any:
        return tenant_api.patch(f"/api/tenants/{tenant.pk}/", {"settings": settings}, format="json")

    return patch


def error_fields(response: Any) -> list[str]:
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"
    return sorted(response.json()["error"]["details"])


def test_numbers_and_booleans_are_not_coerced(tenant, patch_settings):
    answers = [
        patch_settings({"ragConfig": {"topK": "5"}}),
        patch_settings({"ragConfig": {"topK": True}}),
        patch_settings({"ragConfig": {"topK": 5.0}}),
        patch_settings({"ragConfig": {"minSimilarity": "0.7"}}),
        patch_settings({"enableRag": 1}),
        patch_settings({"llm": {"stream": "false"}}),
        patch_settings({"llm": {"maxTokens": "600"}}),
    ]

    assert [error_fields(a) for a in answers] == [
        ["settings.ragConfig.topK"],
        ["settings.ragConfig.topK"],
        ["settings.ragConfig.topK"],
        ["settings.ragConfig.minSimilarity"],
        ["settings.enableRag"],
        ["settings.llm.stream"],
        ["settings.llm.maxTokens"],
    ]
    assert Tenant.objects.get(pk=tenant.pk).settings["ragConfig"]["topK"] == 5  # the default, untouched


def test_json_numbers_that_fit_are_still_accepted(tenant, patch_settings):
    response = patch_settings(
        {
            "ragConfig": {"topK": 8, "minSimilarity": 0.65, "hybridWeights": {"keyword": 1, "vector": 0}},
            "llm": {"temperature": 1},
        }
    )

    assert response.status_code == 200, response.content
    rag = Tenant.objects.get(pk=tenant.pk).settings["ragConfig"]
    assert (rag["topK"], rag["minSimilarity"], rag["hybridWeights"]) == (8, 0.65, {"keyword": 1.0, "vector": 0.0})


def test_long_values_are_refused(tenant, patch_settings):
    four_mb = "m" * (4 * 1024 * 1024)

    answers = [
        patch_settings({"llm": {"model": four_mb}}),
        patch_settings({"llm": {"model": "m" * 201}}),
        patch_settings({"embedding": {"model": "m" * 201}}),
        patch_settings({"llm": {"baseUrl": "https://example.com/" + "v" * 2048}}),
        patch_settings({"locale": ["en-" + "-".join(["abcdefgh"] * 10)]}),
        patch_settings({"brandName": "b" * 121}),
    ]

    assert [error_fields(a) for a in answers] == [
        ["settings.llm.model"],
        ["settings.llm.model"],
        ["settings.embedding.model"],
        ["settings.llm.baseUrl"],
        ["settings.locale.0"],
        ["settings.brandName"],
    ]
    assert patch_settings({"llm": {"model": "m" * 200}}).status_code == 200
    assert len(Tenant.objects.get(pk=tenant.pk).settings["llm"]["model"]) == 200


def test_endpoint_urls_are_checked_when_saved(tenant, patch_settings, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False

    answers = {
        url: patch_settings({"llm": {"provider": "openai_compatible", "baseUrl": url}})
        for url in [
            "javascript:alert(1)",
            "ftp://files.example.com/v1",
            "http://user:pass@api.example.com/v1",
            "http:///v1",
            "http://127.0.0.1:11434/v1",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/v1",
            "http://10.1.2.3/v1",
        ]
    }
    metadata = patch_settings({"embedding": {"provider": "openai_compatible", "baseUrl": "http://169.254.169.254/"}})
    public = patch_settings({"llm": {"provider": "openai_compatible", "baseUrl": "https://93.184.215.14/v1"}})

    assert {url: error_fields(a) for url, a in answers.items()} == {url: ["settings.llm.baseUrl"] for url in answers}
    assert (
        "link-local"
        in answers["http://169.254.169.254/latest/meta-data/"].json()["error"]["details"]["settings.llm.baseUrl"][0]
    )
    assert error_fields(metadata) == ["settings.embedding.baseUrl"]
    assert public.status_code == 200
    assert Tenant.objects.get(pk=tenant.pk).settings["llm"]["baseUrl"] == "https://93.184.215.14/v1"


def test_settings_saved_under_older_rules_still_load_with_defaults_for_what_fails(tenant, tenant_api, caplog):
    legacy = dict(tenant.settings)
    legacy["ragConfig"] = {**legacy["ragConfig"], "topK": "7"}  # coerced on read, as before
    legacy["llm"] = {
        **legacy["llm"],
        "provider": "openai_compatible",
        "model": "m" * 5000,
        "baseUrl": "javascript:alert(1)",
        "apiKeySecret": "webhook.0b1c.headers",
    }
    Tenant.objects.filter(pk=tenant.pk).update(settings=legacy)
    caplog.set_level(logging.WARNING, logger="tenants.settings_schema")

    config = Tenant.objects.get(pk=tenant.pk).config
    read = tenant_api.get(f"/api/tenants/{tenant.pk}/")

    assert config.rag_config.top_k == 7
    assert (config.llm.provider, config.llm.model, config.llm.base_url, config.llm.api_key_secret) == (
        "openai_compatible",
        "",
        "",
        "",
    )
    [record] = [r for r in caplog.records if r.name == "tenants.settings_schema"]
    assert record.settings_fields == ["llm.apiKeySecret", "llm.baseUrl", "llm.model"]
    assert "m" * 100 not in caplog.text
    assert read.status_code == 200
    # The next change must fix what fails today's rules: the answer names each field.
    update = tenant_api.patch(f"/api/tenants/{tenant.pk}/", {"settings": {"tone": "formal"}}, format="json")
    assert error_fields(update) == [
        "settings.llm.apiKeySecret",
        "settings.llm.baseUrl",
        "settings.llm.model",
        "settings.ragConfig.topK",
    ]


def test_check_tenant_settings_lists_tenants_whose_stored_settings_fail(tenant, other_tenant):
    from io import StringIO

    from django.core.management import CommandError, call_command

    Tenant.objects.filter(pk=tenant.pk).update(settings={**tenant.settings, "ragConfig": {"topK": True}})
    out = StringIO()

    with pytest.raises(CommandError, match="1 tenant"):
        call_command("check_tenant_settings", stdout=out)

    assert out.getvalue() == f"{tenant.slug} ({tenant.pk}): ragConfig.topK: Input should be a valid integer\n"
