"""Findings 1-3 of the hostile-tenant review: what a tenant can point the platform at.

A local listener stands in for the host a tenant chose. With ``EGRESS_ALLOW_PRIVATE_TARGETS`` on it
plays a public host (to see what would be sent there); with it off it is what it really is, a
loopback address, and must receive nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from channels_app.models import InboundEvent
from config.openai_clients import reset_clients
from conversations.llm import provider_for_tenant
from conversations.llm.base import CompletionRequest, LLMError
from tenants.models import Tenant
from tenants.secrets import tenant_secret_set
from tests.channels_app.conftest import MS_SECRET, fixture_bytes, graph, ms_channel, post_webhook  # noqa: F401
from tests.conftest import wait_until

DEPLOYMENT_LLM_KEY = "sk-deployment-llm-key"
DEPLOYMENT_EMBEDDING_KEY = "sk-deployment-embedding-key"


class Listener:
    """Records every request; answers with ``answer(method, path, body) -> (status, headers, bytes)``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self.answer: Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]] = lambda m, p, b: (
            200,
            {"Content-Type": "application/json"},
            b"{}",
        )


@pytest.fixture
def listener(local_http_server: Callable[..., Any]) -> Listener:
    recorder = Listener()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            recorder.requests.append(
                {"method": self.command, "path": self.path, "authorization": self.headers.get("Authorization", "")}
            )
            status, headers, content = recorder.answer(self.command, self.path, body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _handle

    recorder.url = local_http_server(Handler).url
    return recorder


@pytest.fixture(autouse=True)
def _deployment_keys(settings: Any) -> Any:
    settings.OPENAI_API_KEY = DEPLOYMENT_LLM_KEY
    settings.OPENAI_BASE_URL = ""
    settings.EMBEDDING_API_KEY = DEPLOYMENT_EMBEDDING_KEY
    settings.EMBEDDING_BASE_URL = ""
    settings.EMBEDDING_CACHE_DIR = ""
    settings.LLM_MAX_RETRIES = 0
    settings.LLM_TIMEOUT_SECONDS = 5
    reset_clients()
    yield
    reset_clients()


def embeddings_answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    texts = json.loads(body)["input"]
    data = [{"object": "embedding", "index": i, "embedding": [0.1] * 8} for i in range(len(texts))]
    return 200, {"Content-Type": "application/json"}, json.dumps({"object": "list", "data": data}).encode()


def chat_answer(text: str) -> Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]:
    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        completion = {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(completion).encode()

    return answer


def ask(tenant: Tenant) -> str:
    tenant.refresh_from_db()
    request = CompletionRequest(
        messages=[{"role": "user", "content": "hi"}], tools=[], temperature=0, max_tokens=50, query="hi"
    )
    return provider_for_tenant(tenant).complete(request).text


def store_llm_settings(tenant: Tenant, **llm: Any) -> None:
    """Settings as a tenant may have saved them while the name still resolved to a public address."""
    tenant.settings = {**tenant.settings, "llm": {**tenant.settings.get("llm", {}), **llm}}
    tenant.save(update_fields=["settings"])


# --- finding 1: the deployment's keys stay with the deployment's endpoints -------------------------------


@pytest.mark.parametrize("provider", ["openai", "openai_compatible"])
def test_the_deployment_embedding_key_never_reaches_a_tenant_base_url(provider, tenant, tenant_api, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True  # the listener plays the attacker's public host
    listener.answer = embeddings_answer
    answer = tenant_api.patch(
        f"/api/tenants/{tenant.pk}/",
        {"settings": {"embedding": {"provider": provider, "baseUrl": listener.url + "/v1", "model": "m"}}},
        format="json",
    )
    assert answer.status_code == 200, answer.content

    assert tenant_api.get(f"/api/tenants/{tenant.pk}/search", {"q": "opening hours"}).status_code == 200

    assert [r["path"] for r in listener.requests] == ["/v1/embeddings"]
    assert DEPLOYMENT_EMBEDDING_KEY not in listener.requests[0]["authorization"]


def test_a_tenant_embedding_endpoint_gets_the_tenants_own_key(tenant, tenant_api, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    listener.answer = embeddings_answer
    tenant_secret_set(tenant=tenant, name="embedder-key", value="sk-tenant-own")
    tenant_api.patch(
        f"/api/tenants/{tenant.pk}/",
        {
            "settings": {
                "embedding": {
                    "provider": "openai",
                    "baseUrl": listener.url + "/v1",
                    "model": "m",
                    "apiKeySecret": "embedder-key",
                }
            }
        },
        format="json",
    )

    tenant_api.get(f"/api/tenants/{tenant.pk}/search", {"q": "opening hours"})

    assert [r["authorization"] for r in listener.requests] == ["Bearer sk-tenant-own"]


def test_the_deployment_llm_key_never_reaches_a_tenant_base_url(tenant, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    listener.answer = chat_answer("hello")
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=listener.url + "/v1", model="m")

    assert ask(tenant) == "hello"

    assert listener.requests and all(DEPLOYMENT_LLM_KEY not in r["authorization"] for r in listener.requests)


def test_an_openai_provider_with_its_own_base_url_and_no_key_secret_is_refused_before_any_call(
    tenant, listener, settings
):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    store_llm_settings(tenant, provider="openai", baseUrl=listener.url + "/v1", model="m")

    with pytest.raises(LLMError) as refused:
        ask(tenant)

    assert refused.value.code == "llm_config"
    assert listener.requests == []


# --- finding 2: a tenant's LLM endpoint goes through the egress guard ---------------------------------------


def test_a_tenant_llm_endpoint_on_a_loopback_address_is_never_called(tenant, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=listener.url + "/v1", model="m")

    with pytest.raises(LLMError) as refused:
        ask(tenant)

    assert refused.value.code == "llm_egress_refused"
    assert "loopback" in str(refused.value)
    assert listener.requests == []


def test_an_address_that_turns_private_after_the_check_is_refused_when_connecting(tenant, listener, settings):
    """DNS rebinding: the URL passed every check, then resolves to loopback when the call connects."""
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    port = listener.url.rsplit(":", 1)[1]
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=f"http://localhost:{port}/v1", model="m")
    provider = provider_for_tenant(tenant)  # checked now, while the address was acceptable
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    request = CompletionRequest(
        messages=[{"role": "user", "content": "hi"}], tools=[], temperature=0, max_tokens=50, query="hi"
    )

    with pytest.raises(LLMError) as refused:
        provider.complete(request)

    assert refused.value.code == "llm_egress_refused"
    assert listener.requests == []


def test_a_redirect_from_a_tenant_llm_endpoint_is_not_followed(
    tenant, listener, settings, local_http_server: Callable[..., Any]
):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    second: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            second.append(self.path)
            self.send_response(200)
            self.end_headers()

    elsewhere = local_http_server(Elsewhere).url
    listener.answer = lambda m, p, b: (307, {"Location": elsewhere + "/v1/chat/completions"}, b"")
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=listener.url + "/v1", model="m")

    with pytest.raises(LLMError) as failed:
        ask(tenant)

    assert failed.value.code == "llm_http_error"
    assert str(failed.value) == "the LLM provider answered 307"
    assert second == []


def test_an_upstream_error_body_never_reaches_the_error_message(tenant, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    leaked = {"error": {"message": "internal db at 10.0.0.7 password=hunter2", "code": "server_error"}}
    listener.answer = lambda m, p, b: (500, {"Content-Type": "application/json"}, json.dumps(leaked).encode())
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=listener.url + "/v1", model="m")

    with pytest.raises(LLMError) as failed:
        ask(tenant)

    assert str(failed.value) == "the LLM provider answered 500 (server_error)"


def test_an_oversized_llm_answer_is_cut_off(tenant, listener, settings):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True
    settings.EGRESS_MAX_RESPONSE_BYTES = 100_000
    listener.answer = chat_answer("x" * 300_000)
    store_llm_settings(tenant, provider="openai_compatible", baseUrl=listener.url + "/v1", model="m")

    with pytest.raises(LLMError) as failed:
        ask(tenant)

    assert failed.value.code == "llm_response_too_large"


def test_a_tenant_embedding_endpoint_on_loopback_is_never_called_and_search_still_answers(
    tenant, tenant_api, listener, settings
):
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = False
    tenant.settings = {
        **tenant.settings,
        "embedding": {"provider": "openai_compatible", "baseUrl": listener.url + "/v1", "model": "m"},
    }
    tenant.save(update_fields=["settings"])

    answer = tenant_api.get(f"/api/tenants/{tenant.pk}/search", {"q": "opening hours"})

    assert answer.status_code == 200
    assert listener.requests == []


# --- finding 3: media come only from Meta's hosts -----------------------------------------------------------


@pytest.fixture
def worker(live_worker: Any) -> Any:
    yield live_worker
    wait_until(lambda: not InboundEvent.objects.filter(kind="message", status="pending").exists(), timeout=20)


def test_a_signed_messenger_attachment_on_an_internal_address_is_never_fetched(
    graph,  # noqa: F811
    worker,
    ms_channel,  # noqa: F811
    post_webhook,  # noqa: F811
    listener,
    settings,
    tmp_path,
):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.EGRESS_ALLOW_PRIVATE_TARGETS = True  # even where private targets are allowed: not a media host
    payload = json.loads(fixture_bytes("messenger", "attachments_file_and_audio"))
    attachments = payload["entry"][0]["messaging"][0]["message"]["attachments"]
    attachments[0]["payload"]["url"] = f"{listener.url}/latest/meta-data/iam"
    del attachments[1]

    assert post_webhook("messenger", json.dumps(payload).encode(), MS_SECRET).status_code == 200

    row = InboundEvent.objects.get(kind="message")

    def errors() -> list[dict[str, Any]]:
        row.refresh_from_db()
        return row.normalized["raw"].get("_media_errors")

    [error] = wait_until(errors, timeout=20)
    assert error["code"] == "media_host_refused"
    assert row.normalized["media"][0]["storage_path"] == ""
    assert listener.requests == []
    assert list(tmp_path.rglob("*.*")) == []
