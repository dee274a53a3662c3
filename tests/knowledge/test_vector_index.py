"""The vector leg in pgvector: the HNSW path must find what the exact search finds with true
cosines, always return k results when the tenant has k vectors (the exact scan takes over when the
filtered HNSW scan comes back short), see a vector write at once, and never see another tenant's
vectors; a small tenant is searched exactly."""

from __future__ import annotations

import re
import uuid
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from config.db import server_bound_cursor
from knowledge import vectors
from knowledge.embedders import LOCAL_MODEL_ID
from knowledge.models import Chunk, Document
from knowledge.retrieval import hybrid_search

DIM = 384
HNSW_RAN = re.compile(r"Index Scan using chunk_embedding_hnsw_384 on knowledge_chunk \w+ \(actual")


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 40 topics: the shape of real embeddings (near neighbours share a topic)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(40, dim)).astype(np.float32)
    out = topics[rng.integers(0, len(topics), size=n)] + rng.normal(scale=1.0, size=(n, dim)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def store(tenant: Any, matrix: np.ndarray, model_id: str = LOCAL_MODEL_ID) -> list[int]:
    """Chunks of one document with these vectors, written the way indexing writes them."""
    document = Document.objects.create(
        tenant=tenant, title="vectors", filename="v.txt", format="text", size_bytes=0, sha256=uuid.uuid4().hex,
        storage_name="-", status="indexed", embedding_model=model_id,
    )  # fmt: skip
    chunks = Chunk.objects.bulk_create(
        [
            Chunk(tenant=tenant, document=document, position=i, content=f"chunk {i}", token_count=2)
            for i in range(len(matrix))
        ]
    )
    ids = [c.pk for c in chunks]
    vectors.write_vectors(tenant_id=tenant.pk, ids=ids, vectors=matrix, model_id=model_id)
    return ids


def plan(tenant: Any, vector: np.ndarray, limit: int, *, buffers: bool = False) -> str:
    sql = f"WITH {vectors.vector_leg_sql(len(vector))} SELECT id FROM vec"
    params = vectors.vector_leg_params(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=vector, limit=limit)
    options = "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF" + (", BUFFERS" if buffers else ", BUFFERS OFF")
    with server_bound_cursor() as cursor:  # as the hybrid search sends it: the planner sees the values
        cursor.execute(f"EXPLAIN ({options}) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def hnsw(settings: Any) -> Any:
    """Every tenant counts as large: searches go through the HNSW index."""
    settings.KNOWLEDGE_VECTOR_EXACT_MAX = -1
    settings.KNOWLEDGE_VECTOR_HNSW_COST = 0
    return settings


def test_the_hnsw_index_is_built_and_finds_the_exact_neighbours(hnsw: Any, tenant: Any, other_tenant: Any) -> None:
    matrix = clustered(3000, seed=1)
    ids = store(tenant, matrix)
    store(other_tenant, clustered(1000, seed=11))
    with connection.cursor() as cursor:  # a build over existing rows, as a deployment migrating its data
        cursor.execute("REINDEX INDEX chunk_embedding_hnsw_384")
        cursor.execute("ANALYZE knowledge_chunk")  # as autovacuum would after such a load
    rng = np.random.default_rng(2)

    assert HNSW_RAN.search(plan(tenant, matrix[0], 10))
    recalls = []
    for row in rng.choice(len(ids), size=40, replace=False):
        query = matrix[row] + rng.normal(scale=0.02, size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=query, limit=10)
        exact = [ids[i] for i in np.argsort(-(matrix @ query))[:10]]
        assert got[0][0] == ids[row]  # the chunk the question was made from comes first
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        assert got[0][1] == pytest.approx(float(matrix[row] @ query), abs=1e-5)  # true cosines
        recalls.append(len({i for i, _ in got} & set(exact)) / 10)
    assert np.mean(recalls) >= 0.95


def test_a_small_graph_is_walked_with_a_shorter_search_list_for_that_statement_only(
    hnsw: Any, transactional_db: Any, tenant: Any, other_tenant: Any
) -> None:
    """The statement sets hnsw.ef_search for its own transaction from the graph's size: a 4,000-row
    graph is walked with KNOWLEDGE_HNSW_EF_SEARCH_SMALL (fewer index pages), and the connection's own
    setting is what it was afterwards."""
    matrix = clustered(3000, seed=21)
    store(tenant, matrix)
    store(other_tenant, clustered(1000, seed=22))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE knowledge_chunk")

    def pages_walked() -> int:
        explained = plan(tenant, matrix[5], 10, buffers=True)
        walked = re.search(
            r"Index Scan using chunk_embedding_hnsw_384 .*\n(?:.*\n)*?\s+Buffers: shared hit=(\d+)", explained
        )
        assert walked, explained
        return int(walked.group(1))

    short_list = pages_walked()
    with override_settings(KNOWLEDGE_HNSW_SMALL_GRAPH_ROWS=0):  # every graph counts as large
        full_list = pages_walked()

    assert short_list < full_list
    with connection.cursor() as cursor:
        cursor.execute("SHOW hnsw.ef_search")
        assert cursor.fetchone()[0] == str(settings.KNOWLEDGE_HNSW_EF_SEARCH)
    assert vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=matrix[5], limit=1)[0][1] == (
        pytest.approx(1.0, abs=1e-5)
    )


def test_a_small_tenant_is_searched_exactly(settings: Any, tenant: Any, other_tenant: Any) -> None:
    settings.KNOWLEDGE_VECTOR_EXACT_MAX = 100
    matrix = clustered(200, seed=12)
    store(tenant, matrix)
    store(other_tenant, clustered(3000, seed=13))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO knowledge_lexicalstats (tenant_id, chunk_count, total_length) VALUES (%s, 200, 0), (%s, 3000, 0)",
            [tenant.pk, other_tenant.pk],
        )
        cursor.execute("ANALYZE knowledge_chunk")

    explained = plan(tenant, matrix[3], 10)  # 200^2 < 16 x 10 x 3,200: the exact scan is cheaper
    theirs = plan(other_tenant, matrix[3], 10)  # 3,000^2 > 16 x 10 x 3,200: the graph walk is

    assert not HNSW_RAN.search(explained) and "Seq Scan" not in explained
    assert HNSW_RAN.search(theirs)
    assert vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=matrix[3], limit=1)[0][1] == (
        pytest.approx(1.0, abs=1e-5)
    )


def test_a_short_hnsw_scan_is_completed_by_the_exact_scan(hnsw: Any, tenant: Any, other_tenant: Any) -> None:
    store(other_tenant, clustered(3000, seed=3))  # the index is mostly another tenant's
    mine = store(tenant, clustered(60, seed=4))
    query = clustered(1, seed=5)[0]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.max_scan_tuples = 50")  # the filtered scan gives up early

    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=query, limit=40)
    results = hybrid_search(
        tenant=tenant, query="chunk", k=40, keyword_weight=0, vector_weight=1, query_vector=query, candidates=40
    )

    assert len(got) == 40 and {i for i, _ in got} <= set(mine)
    exact = np.argsort(-(clustered(60, seed=4) @ query))[:40]
    assert [i for i, _ in got] == [mine[i] for i in exact]
    assert len(results) == 40


def test_a_new_vector_is_found_at_once_and_other_tenants_are_never_searched(
    hnsw: Any, tenant: Any, other_tenant: Any
) -> None:
    mine = store(tenant, clustered(1200, seed=5))
    theirs = clustered(1200, seed=6)
    their_ids = store(other_tenant, theirs)
    target = theirs[7]  # the other tenant holds the exact vector asked for
    late = store(tenant, target[None, :])[0]  # a new document of this tenant with that vector

    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=target, limit=20)
    both = hybrid_search(tenant=tenant, query="chunk", k=20, query_vector=target, min_relevance=0)

    assert got[0] == (late, pytest.approx(1.0, abs=1e-5))
    assert {i for i, _ in got} <= set(mine) | {late}
    assert not {i for i, _ in got} & set(their_ids)
    assert not {r.chunk_id for r in both} & set(their_ids)


def test_a_deleted_document_and_another_model_are_never_returned(hnsw: Any, tenant: Any) -> None:
    kept = store(tenant, clustered(300, seed=8))
    gone_matrix = clustered(50, seed=9)
    gone = store(tenant, gone_matrix)
    other_model = store(tenant, clustered(20, seed=10, dim=768), model_id="openai:some-768-model")

    Document.objects.filter(chunks__pk=gone[0]).delete()
    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=gone_matrix[0], limit=400)

    assert {i for i, _ in got} == set(kept)
    assert not {i for i, _ in got} & set(other_model)


def test_a_large_tenant_gets_an_index_of_its_own_that_its_searches_walk(
    settings: Any, tenant: Any, other_tenant: Any
) -> None:
    settings.KNOWLEDGE_VECTOR_TENANT_INDEX_MIN = 500
    matrix = clustered(800, seed=14)
    ids = store(tenant, matrix)
    store(other_tenant, clustered(3000, seed=15))
    small = store(tenant, clustered(5, seed=16, dim=768), model_id="openai:some-768-model")  # under the minimum
    with connection.cursor() as cursor:  # (the test's transaction: checks deferred to commit block DDL)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    assert vectors.ensure_tenant_indexes(concurrently=False) == {"created": 2, "dropped": 0}
    assert vectors.ensure_tenant_indexes(concurrently=False) == {"created": 0, "dropped": 0}  # idempotent
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE knowledge_chunk")
    own = vectors.tenant_index_name(tenant.pk, DIM)
    explained = plan(tenant, matrix[5], 10)

    assert re.search(rf"Index Scan using {own} on knowledge_chunk \w+ \(actual", explained)
    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=matrix[5], limit=10)
    exact = [ids[i] for i in np.argsort(-(matrix @ matrix[5]))[:10]]
    assert [i for i, _ in got] == exact
    assert not {i for i, _ in got} & set(small)

    gone = vectors.tenant_index_name(other_tenant.pk, DIM)
    other_tenant.delete()  # a deleted tenant's index goes with the next run
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert vectors.ensure_tenant_indexes(concurrently=False) == {"created": 0, "dropped": 1}
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [gone])
        assert cursor.fetchone() == (None,)
