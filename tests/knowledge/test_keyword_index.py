"""The keyword leg's index: statistics kept right through upload, delete and re-index; the budgeted
(impact-ordered) read ranks like the exhaustive one; tenants never see each other's statistics; the
migration that introduced impacts and document frequencies applies to existing postings and back."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count

from knowledge import indexing, retrieval, services
from knowledge.lexical import keyword_search, text_search_config
from knowledge.models import Chunk, ChunkTerm, Document, LexicalStats, TermStats

RETURNS_MD = b"""# Returns

Items can be returned within 30 days of delivery for a full refund to the original card.

# Damaged goods

If your parcel arrives damaged, send us a photo and we replace it free of charge.
"""

SHIPPING_MD = b"""# Shipping

We ship to Portugal, Spain and France with tracked delivery in 3 to 5 working days.

# Porto pickup

Orders can be collected at the Porto store; a refund for a pickup order goes to the original card.
"""


def index(api: Any, tenant: Any, name: str, content: bytes) -> Document:
    """Upload through the API and index synchronously (the real indexing run, without a worker)."""
    response = api.post(
        f"/api/tenants/{tenant.pk}/documents/", {"file": SimpleUploadedFile(name, content)}, format="multipart"
    )
    assert response.status_code == 201, response.content
    document = indexing.index_document(document_id=response.json()["id"], force=True)
    assert document is not None and document.status == "indexed", document and document.error
    return document


def postings_per_term(tenant: Any) -> dict[str, int]:
    rows = ChunkTerm.objects.for_tenant(tenant).values("term").annotate(n=Count("chunk")).values_list("term", "n")
    return dict(rows)


def assert_statistics_match_postings(tenant: Any) -> None:
    assert dict(TermStats.objects.for_tenant(tenant).values_list("term", "df")) == postings_per_term(tenant)
    chunks = Chunk.objects.for_tenant(tenant)
    stats = LexicalStats.objects.get(tenant=tenant)
    assert stats.chunk_count == chunks.count()
    assert stats.total_length == sum(chunks.values_list("lexical_length", flat=True))


def keyword_results(tenant: Any, query: str, k: int) -> list[tuple[int, float]]:
    results = retrieval.hybrid_search(tenant=tenant, query=query, k=k, vector_weight=0, keyword_weight=1)
    return [(r.chunk_id, r.scores["keyword"]) for r in results]


def test_document_frequencies_follow_upload_delete_and_reindex(tenant: Any, tenant_api: Any, settings: Any) -> None:
    returns = index(tenant_api, tenant, "returns.md", RETURNS_MD)
    shipping = index(tenant_api, tenant, "shipping.md", SHIPPING_MD)
    assert_statistics_match_postings(tenant)
    assert TermStats.objects.get(tenant=tenant, term="card").df == 2  # one chunk of each document
    assert keyword_results(tenant, "damaged parcel photo", 3)

    services.document_delete(document=returns)

    assert_statistics_match_postings(tenant)
    assert TermStats.objects.get(tenant=tenant, term="card").df == 1
    assert not TermStats.objects.filter(tenant=tenant, term="parcel").exists()
    assert keyword_results(tenant, "damaged parcel photo", 3) == []

    settings.KNOWLEDGE_CHUNK_TOKENS = 16  # a re-index with smaller chunks: more postings, same terms
    reindexed = indexing.index_document(document_id=shipping.pk, force=True)
    assert reindexed is not None and reindexed.chunks_total > shipping.chunks_total
    assert_statistics_match_postings(tenant)

    call_command("reindex", "--tenant", tenant.slug, "--keyword-only")
    assert_statistics_match_postings(tenant)
    top = keyword_results(tenant, "porto pickup", 1)
    assert [Chunk.objects.get(pk=chunk_id).section for chunk_id, _ in top] == ["Porto pickup"]


def test_another_tenants_documents_never_change_my_keyword_scores(
    tenant: Any, other_tenant: Any, tenant_api: Any, api_for: Any, settings: Any
) -> None:
    index(tenant_api, tenant, "shipping.md", SHIPPING_MD)
    before = keyword_results(tenant, "refund to the original card", 5)
    my_stats = dict(TermStats.objects.for_tenant(tenant).values_list("term", "df"))

    theirs = api_for(other_tenant)
    index(theirs, other_tenant, "shipping.md", SHIPPING_MD)
    index(theirs, other_tenant, "returns.md", RETURNS_MD)
    index(theirs, other_tenant, "refunds.md", b"# Refunds\n\nRefund refund refund: every refund goes to the card.\n")

    assert keyword_results(tenant, "refund to the original card", 5) == before
    assert dict(TermStats.objects.for_tenant(tenant).values_list("term", "df")) == my_stats
    mine = set(Chunk.objects.for_tenant(tenant).values_list("id", flat=True))
    assert {chunk_id for chunk_id, _ in before} <= mine
    # Even when asked for another tenant's chunk ids (the other leg's candidates), the keyword leg
    # scores only this tenant's postings, cut or not.
    foreign = list(Chunk.objects.for_tenant(other_tenant).values_list("id", flat=True))
    for budget in (1, 3000):
        settings.KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM = budget
        hits = keyword_search(
            tenant_id=tenant.pk, query="refund card shipping", config="english", limit=1, include_ids=foreign
        )
        assert hits and {h.chunk_id for h in hits} <= mine


def many_sections() -> bytes:
    """Twelve sections that all mention refunds (some more often), two of them Porto."""
    parts = []
    for n in range(12):
        refunds = " ".join(["refund"] * (1 + n % 4))
        place = "The Porto store handles it." if n in (5, 9) else "Any store handles it."
        parts.append(f"# Case {n}\n\nCase number {n}: {refunds} requested by a customer. {place}\n")
    return "\n".join(parts).encode()


def test_budgeted_keyword_leg_ranks_like_the_exhaustive_one_and_fills_k(
    tenant: Any, tenant_api: Any, settings: Any
) -> None:
    settings.KNOWLEDGE_CHUNK_TOKENS = 40  # one chunk per section
    index(tenant_api, tenant, "cases.md", many_sections())
    assert Chunk.objects.for_tenant(tenant).count() == 12
    # Read at most 3 postings per term (the limit below): "refund" (12 chunks) is cut, "porto" (2) is not.
    settings.KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM = 1
    config = text_search_config(tenant=tenant)

    for query in ("porto refund", "refund requested", "refund"):
        budgeted = keyword_search(tenant_id=tenant.pk, query=query, config=config, limit=3)
        exhaustive = keyword_search(tenant_id=tenant.pk, query=query, config=config, limit=3, exhaustive=True)
        assert [(h.chunk_id, round(h.bm25, 6), round(h.coverage, 6)) for h in budgeted] == [
            (h.chunk_id, round(h.bm25, 6), round(h.coverage, 6)) for h in exhaustive
        ], query

    # Always k results when k chunks match, although each term's read stops early.
    settings.KNOWLEDGE_CANDIDATES = 3
    assert len(keyword_results(tenant, "refund", 8)) == 8
    # The other leg's candidates get their exact BM25 too, wherever they rank.
    last = keyword_search(tenant_id=tenant.pk, query="refund", config=config, limit=12, exhaustive=True)[-1]
    budgeted = keyword_search(tenant_id=tenant.pk, query="refund", config=config, limit=3, include_ids=[last.chunk_id])
    assert [(h.chunk_id, round(h.bm25, 6)) for h in budgeted if h.chunk_id == last.chunk_id] == [
        (last.chunk_id, round(last.bm25, 6))
    ]


@pytest.mark.django_db(transaction=True)
def test_impact_migration_applies_to_existing_postings_and_reverses(make_tenant: Any) -> None:
    tenant = make_tenant("Legacy")
    executor = MigrationExecutor(connection)
    executor.migrate([("knowledge", "0001_initial")])
    try:
        with connection.cursor() as cursor:  # postings as the previous schema stored them
            cursor.execute(
                """
                INSERT INTO knowledge_document (id, tenant_id, title, filename, format, size_bytes, sha256,
                    storage_name, status, error, chunks_total, chunks_embedded, tokens_total, embedding_model,
                    index_generation, created_at, updated_at)
                VALUES (gen_random_uuid(), %s, 'Old', 'old.txt', 'text', 1, 'x', '-', 'indexed', '', 2, 0, 0, '',
                        1, now(), now())
                RETURNING id
                """,
                [tenant.pk],
            )
            document_id = cursor.fetchone()[0]
            cursor.execute(
                """
                INSERT INTO knowledge_chunk (tenant_id, document_id, position, content, section, token_count,
                    lexical_length, embedding_model)
                VALUES (%s, %s, 0, 'refund card', '', 2, 2, ''), (%s, %s, 1, 'refund refund refund store', '', 4, 4, '')
                RETURNING id
                """,
                [tenant.pk, document_id, tenant.pk, document_id],
            )
            first, second = (row[0] for row in cursor.fetchall())
            cursor.execute(
                """
                INSERT INTO knowledge_chunkterm (tenant_id, chunk_id, term, tf, doc_len)
                VALUES (%(t)s, %(a)s, 'refund', 1, 2), (%(t)s, %(a)s, 'card', 1, 2),
                       (%(t)s, %(b)s, 'refund', 3, 4), (%(t)s, %(b)s, 'store', 1, 4)
                """,
                {"t": tenant.pk, "a": first, "b": second},
            )
            cursor.execute(
                "INSERT INTO knowledge_lexicalstats (tenant_id, chunk_count, total_length, vector_version)"
                " VALUES (%s, 2, 6, 0)",
                [tenant.pk],
            )
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("knowledge"))

        assert dict(TermStats.objects.for_tenant(tenant).values_list("term", "df")) == {
            "refund": 2,
            "card": 1,
            "store": 1,
        }
        impacts = dict(ChunkTerm.objects.for_tenant(tenant).filter(term="refund").values_list("chunk_id", "impact"))
        # BM25 tf component, k1 0.9, b 0.4, average length 3.
        assert impacts[first] == pytest.approx(1 * 1.9 / (1 + 0.9 * (0.6 + 0.4 * 2 / 3)), rel=1e-6)
        assert impacts[second] == pytest.approx(3 * 1.9 / (3 + 0.9 * (0.6 + 0.4 * 4 / 3)), rel=1e-6)
        hits = keyword_search(tenant_id=tenant.pk, query="refund", config="simple", limit=5)
        assert [h.chunk_id for h in hits] == [second, first]

        executor = MigrationExecutor(connection)
        executor.migrate([("knowledge", "0001_initial")])
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM knowledge_chunkterm WHERE tenant_id = %s", [tenant.pk])
            assert cursor.fetchone()[0] == 4
            cursor.execute("SELECT to_regclass('knowledge_termstats'), to_regclass('chunkterm_term')")
            assert cursor.fetchone() == (None, "chunkterm_term")
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("knowledge"))
