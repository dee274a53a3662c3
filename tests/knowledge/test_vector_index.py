"""The vector leg of a large tenant: ranked on a reduced (PCA) copy of its vectors and re-ranked
exactly, it must still find what the exact search finds with true cosines, always return k results
when the tenant has k vectors, see a vector write at once, and never see another tenant's vectors."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from knowledge import vectors
from knowledge.embedders import LOCAL_MODEL_ID
from knowledge.models import Chunk, Document
from knowledge.retrieval import hybrid_search

DIM = 384


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 40 topics: the shape of real embeddings (near neighbours share a topic)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(40, DIM)).astype(np.float32)
    out = topics[rng.integers(0, len(topics), size=n)] + rng.normal(scale=1.0, size=(n, DIM)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def store(tenant: Any, matrix: np.ndarray) -> list[int]:
    """Chunks of one document with these vectors, written the way indexing writes them."""
    document = Document.objects.create(
        tenant=tenant, title="vectors", filename="v.txt", format="text", size_bytes=0, sha256=uuid.uuid4().hex,
        storage_name="-", status="indexed", embedding_model=LOCAL_MODEL_ID,
    )  # fmt: skip
    chunks = Chunk.objects.bulk_create(
        [
            Chunk(tenant=tenant, document=document, position=i, content=f"chunk {i}", token_count=2)
            for i in range(len(matrix))
        ]
    )
    ids = [c.pk for c in chunks]
    vectors.write_vectors(tenant_id=tenant.pk, ids=ids, vectors=matrix, model_id=LOCAL_MODEL_ID)
    return ids


@pytest.fixture
def reduced(settings: Any) -> Any:
    settings.KNOWLEDGE_VECTOR_REDUCE_MIN = 1000
    return settings


def test_reduced_search_finds_the_exact_neighbours(reduced: Any, tenant: Any) -> None:
    matrix = clustered(4000, seed=1)
    ids = store(tenant, matrix)
    rng = np.random.default_rng(2)

    index = vectors.index_for(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID)
    assert index.reduced is not None and index.reduced.shape == (4000, 64)  # ranked on 64 of 384 dimensions
    recalls = []
    for row in rng.choice(len(ids), size=40, replace=False):
        query = matrix[row] + rng.normal(scale=0.02, size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        got = index.nearest(query, 10)
        exact = [ids[i] for i in np.argsort(-(matrix @ query))[:10]]
        assert got[0][0] == ids[row]  # the chunk the question was made from comes first
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        assert got[0][1] == pytest.approx(float(matrix[row] @ query), abs=1e-5)  # true cosines, not estimates
        recalls.append(len({i for i, _ in got} & set(exact)) / 10)
    assert np.mean(recalls) >= 0.95


def test_reduced_search_returns_k(reduced: Any, tenant: Any) -> None:
    ids = store(tenant, clustered(5000, seed=3))
    query = clustered(1, seed=4)[0]

    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=query, limit=300)
    results = hybrid_search(
        tenant=tenant, query="chunk", k=300, keyword_weight=0, vector_weight=1, query_vector=query, candidates=300
    )

    assert len({i for i, _ in got}) == 300 and {i for i, _ in got} <= set(ids)
    assert len(results) == 300


def test_a_new_vector_is_found_at_once_and_other_tenants_are_never_searched(
    reduced: Any, tenant: Any, other_tenant: Any
) -> None:
    mine = store(tenant, clustered(1200, seed=5))
    vectors.index_for(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID)  # loaded (and reduced) before the write
    theirs = clustered(1200, seed=6)
    their_ids = store(other_tenant, theirs)
    target = theirs[7]  # the other tenant holds the exact vector asked for
    late = store(tenant, target[None, :])[0]  # a new document of this tenant with that vector

    got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=target, limit=20)

    assert got[0] == (late, pytest.approx(1.0, abs=1e-5))
    assert {i for i, _ in got} <= set(mine) | {late}
    assert not {i for i, _ in got} & set(their_ids)


def test_vectors_added_batch_by_batch_are_appended_and_a_removal_reloads(reduced: Any, tenant: Any) -> None:
    first = store(tenant, clustered(1100, seed=8))
    loaded = vectors.index_for(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID)
    batches = [clustered(16, seed=9 + n) for n in range(3)]
    added = [store(tenant, batch) for batch in batches]  # as a document being embedded, 16 at a time

    refreshed = vectors.index_for(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID)
    assert refreshed.projection is loaded.projection  # appended, projected on the loaded directions
    for ids, batch in zip(added, batches, strict=True):
        assert [refreshed.nearest(v, 1)[0][0] for v in batch] == ids
    assert len(loaded.nearest(batches[0][0], 2000)) == 1100  # a search already holding the old state is unchanged

    Document.objects.filter(chunks__pk=first[0]).delete()
    vectors.bump_version(tenant_id=tenant.pk)
    after = vectors.index_for(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID)

    assert after.reduced is None  # 48 vectors left: under the threshold, exact again
    assert {i for i, _ in after.nearest(batches[1][0], 100)} == {i for ids in added for i in ids}
