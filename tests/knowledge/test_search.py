from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
from django.core.management import call_command

from knowledge import retrieval
from knowledge.embedders import EmbeddingError, get_embedder
from knowledge.models import Chunk, Document
from tenants.secrets import tenant_secret_set
from tenants.services import tenant_update
from tests.knowledge.conftest import wait_for_status

FAQ = b"""# Refunds

Refunds are paid back to the original card within 5 business days after we receive the item.

# Opening hours

The Porto store is open from 10:00 to 19:00, Monday to Saturday.
"""


def test_another_tenants_identical_chunks_never_appear(
    live_worker: Any, upload: Any, tenant: Any, other_tenant: Any, api_for: Any
) -> None:
    mine = wait_for_status(upload("faq.md", FAQ).json()["id"])
    theirs = wait_for_status(upload("faq.md", FAQ, api=api_for(other_tenant), target=other_tenant).json()["id"])
    assert theirs.status == mine.status == "indexed"

    results = retrieval.search(tenant=tenant, query="when are refunds paid back to my card?", k=10)

    assert {r.document_id for r in results} == {mine.pk}
    assert {r.chunk_id for r in results} <= set(Chunk.objects.for_tenant(tenant).values_list("id", flat=True))
    response = api_for(tenant).get(f"/api/tenants/{tenant.pk}/search", {"q": "refunds card", "k": 10})
    assert {r["document_id"] for r in response.json()["results"]} == {str(mine.pk)}


def test_search_api_returns_ranked_chunks_with_sources_and_scores(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any
) -> None:
    document = wait_for_status(upload("faq.md", FAQ, title="Shop FAQ").json()["id"])

    response = tenant_api.get(f"/api/tenants/{tenant.pk}/search", {"q": "What time does the Porto store open?", "k": 1})

    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "What time does the Porto store open?"
    assert len(body["results"]) == 1
    top = body["results"][0]
    assert (top["document_id"], top["document_title"], top["section"]) == (
        str(document.pk),
        "Shop FAQ",
        "Opening hours",
    )
    assert top["content"].startswith("Opening hours\n\nThe Porto store is open from 10:00")
    assert set(top["scores"]) == {"keyword", "vector", "fused"}
    assert top["scores"]["keyword"] > 0 and top["scores"]["vector"] > 0.8
    assert 0.7 <= top["score"] <= 1.0


def test_unrelated_question_finds_nothing_relevant(live_worker: Any, upload: Any, tenant: Any) -> None:
    wait_for_status(upload("faq.md", FAQ).json()["id"])

    assert retrieval.search(tenant=tenant, query="who won the chess olympiad in 1980?") == []
    assert retrieval.search(tenant=tenant, query="   ") == []


def test_search_validates_parameters_and_hides_other_tenants(tenant_api: Any, tenant: Any, other_tenant: Any) -> None:
    missing = tenant_api.get(f"/api/tenants/{tenant.pk}/search")
    bad_k = tenant_api.get(f"/api/tenants/{tenant.pk}/search", {"q": "x", "k": 500})
    foreign = tenant_api.get(f"/api/tenants/{other_tenant.pk}/search", {"q": "x"})
    foreign_docs = tenant_api.get(f"/api/tenants/{other_tenant.pk}/documents/")

    assert (missing.status_code, missing.json()["error"]["details"]) == (400, {"q": ["required"]})
    assert bad_k.status_code == 400
    assert foreign.status_code == foreign_docs.status_code == 404


def test_documents_of_another_tenant_answer_404(upload: Any, tenant: Any, other_tenant: Any, api_for: Any) -> None:
    document_id = upload("faq.md", FAQ).json()["id"]
    intruder = api_for(other_tenant)

    assert intruder.get(f"/api/tenants/{other_tenant.pk}/documents/{document_id}/").status_code == 404
    assert intruder.delete(f"/api/tenants/{other_tenant.pk}/documents/{document_id}/").status_code == 404
    assert intruder.post(f"/api/tenants/{other_tenant.pk}/documents/{document_id}/reindex/").status_code == 404
    assert intruder.get(f"/api/tenants/{other_tenant.pk}/documents/").json()["results"] == []
    assert Document.objects.filter(pk=document_id).exists()


class EmbeddingsEndpoint(BaseHTTPRequestHandler):
    """Speaks OpenAI's POST /v1/embeddings: a deterministic 8-d vector per input text."""

    calls: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != "Bearer sk-tenant-key":
            self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            return
        data = []
        for index, text in enumerate(body["input"]):
            rng = np.random.default_rng(sum(map(ord, text)))
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": rng.normal(size=body.get("dimensions") or 8).tolist(),
                }
            )
        self._send(
            200,
            {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 3, "total_tokens": 3}},
        )

    def _send(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_compatible_embedder_uses_the_tenants_secret_and_records_its_model(
    live_worker: Any, local_http_server: Any, upload: Any, tenant: Any
) -> None:
    EmbeddingsEndpoint.calls = []
    server = local_http_server(EmbeddingsEndpoint)
    tenant_secret_set(tenant=tenant, name="embed-key", value="sk-tenant-key")
    tenant = tenant_update(
        tenant=tenant,
        settings={
            "embedding": {
                "provider": "openai_compatible",
                "model": "tiny-embed",
                "baseUrl": f"{server.url}/v1",
                "dimensions": 8,
                "apiKeySecret": "embed-key",
            }
        },
    )

    document = wait_for_status(upload("faq.md", FAQ).json()["id"])

    assert document.status == "indexed", document.error
    assert set(Chunk.objects.filter(document=document).values_list("embedding_model", flat=True)) == {
        "openai_compatible:tiny-embed@8"
    }
    assert EmbeddingsEndpoint.calls[0]["body"]["model"] == "tiny-embed"
    assert EmbeddingsEndpoint.calls[0]["body"]["dimensions"] == 8
    # Random test vectors carry no meaning: look at the vector leg without the relevance cut.
    results = retrieval.hybrid_search(tenant=tenant, query="refunds", k=2, min_relevance=0)
    assert results and all(r.scores["vector"] != 0 for r in results)


def _with_embedding_endpoint(tenant: Any, url: str, *, api_key: str) -> Any:
    """The tenant embeds through an OpenAI-compatible endpoint at ``url`` (model 'm') with this key."""
    tenant_secret_set(tenant=tenant, name="embed-key", value=api_key)
    return tenant_update(
        tenant=tenant,
        settings={
            "embedding": {
                "provider": "openai_compatible",
                "model": "m",
                "baseUrl": f"{url}/v1",
                "apiKeySecret": "embed-key",
            }
        },
    )


def test_embedding_endpoint_refusing_the_key_is_a_clear_error(local_http_server: Any, tenant: Any) -> None:
    server = local_http_server(EmbeddingsEndpoint)
    tenant = _with_embedding_endpoint(tenant, server.url, api_key="sk-wrong")

    try:
        get_embedder(tenant=tenant).embed_passages(["hello"])
        raise AssertionError("expected EmbeddingError")
    except EmbeddingError as exc:
        message = str(exc)
    assert message == "embedding endpoint answered HTTP 401 for model 'm'"
    assert "sk-wrong" not in message


class BrokenEmbeddingsEndpoint(EmbeddingsEndpoint):
    """Answers 200 with a body that is not a list of vectors (a misconfigured compatible server)."""

    answers: list[bytes] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        raw = type(self).answers.pop(0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def test_an_embedding_endpoint_answering_malformed_vectors_is_a_clear_error(
    local_http_server: Any, tenant: Any
) -> None:
    server = local_http_server(BrokenEmbeddingsEndpoint)
    BrokenEmbeddingsEndpoint.answers = [
        b'{"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.3]}]}',
        b'{"object": "list", "data": [{"index": 0}]}',
        b'{"object": "list", "data": []}',
    ]
    tenant = _with_embedding_endpoint(tenant, server.url, api_key="sk-tenant-key")
    embedder = get_embedder(tenant=tenant)
    messages = []
    for texts in (["a", "b"], ["a"], ["a"]):
        try:
            embedder.embed_passages(texts)
            raise AssertionError("expected EmbeddingError")
        except EmbeddingError as exc:
            messages.append(str(exc))
    assert messages == [
        "embedding endpoint answered JSON without well-formed vectors",
        "embedding endpoint answered JSON without well-formed vectors",
        "embedding endpoint returned 0 vectors for 1 texts",
    ]


def test_reindex_command_requeues_a_tenants_documents(live_worker: Any, upload: Any, tenant: Any, capsys: Any) -> None:
    document = wait_for_status(upload("faq.md", FAQ).json()["id"])
    generation = document.index_generation

    call_command("reindex", "--tenant", tenant.slug)

    assert "1 document(s) queued for indexing" in capsys.readouterr().out
    document = wait_for_status(document.pk, "indexed")
    assert Document.objects.get(pk=document.pk).index_generation == generation + 1
