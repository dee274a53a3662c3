"""minSimilarity says whether a search found something; once a chunk passes it, the chunks ranked close
to that one come along (KNOWLEDGE_NEAR_BEST of its fused score), an unrelated one does not, and a
search where nothing passes still finds nothing."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from knowledge import vectors
from knowledge.models import Chunk, Document
from knowledge.retrieval import hybrid_search

DIM = 384
MODEL = "test-unit-scale"


class UnitScale:
    """An embedder whose calibrated relevance is the cosine itself (0 unrelated, 1 the same)."""

    model_id = MODEL
    calibration = (0.0, 1.0)

    def embed_query(self, text: str) -> np.ndarray:
        raise AssertionError("the tests pass their query vector")


def unit(*weights: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


@pytest.fixture
def library(tenant: Any, settings: Any) -> dict[str, int]:
    settings.KNOWLEDGE_PRF_DOCS = 0  # the ranking as fused, without feedback moving it
    document = Document.objects.create(
        tenant=tenant, title="Manual", filename="manual.txt", format="text", size_bytes=0,
        sha256=uuid.uuid4().hex, storage_name="-", status="indexed", embedding_model=MODEL,
    )  # fmt: skip
    # Against the query (1, 0, 0, ...): the answer (cosine 1.0), a close neighbour (0.6), an unrelated
    # chunk (0.1) and filler pointing away (cosine 0) that sets the bottom of the per-query scale.
    shapes = {"answer": unit(1), "neighbour": unit(0.6, 0.8), "unrelated": unit(0.1, 0, 0.995)}
    shapes.update({f"filler {n}": unit(0, 0, 0, *([0] * n), 1) for n in range(6)})
    chunks = Chunk.objects.bulk_create(
        [
            Chunk(tenant=tenant, document=document, position=i, content=name, token_count=2)
            for i, name in enumerate(shapes)
        ]
    )
    vectors.write_vectors(
        tenant_id=tenant.pk, ids=[c.pk for c in chunks], vectors=np.stack(list(shapes.values())), model_id=MODEL
    )
    return {c.content: c.pk for c in chunks}


def search(tenant: Any, query: np.ndarray, **options: Any) -> list[str]:
    found = hybrid_search(tenant=tenant, query="qwxz", k=5, query_vector=query, embedder=UnitScale(), **options)
    return [r.content for r in found]


def test_a_chunk_ranked_close_to_the_best_comes_along_below_min_similarity(tenant: Any, library: Any):
    assert search(tenant, unit(1), min_relevance=0.7) == ["answer", "neighbour"]


def test_reciprocal_rank_fusion_keeps_the_plain_cut(tenant: Any, library: Any):
    assert search(tenant, unit(1), min_relevance=0.7, fusion="rrf") == ["answer"]


def test_nothing_passing_is_still_nothing(tenant: Any, library: Any):
    # Best matches of these queries: the neighbour at cosine 0.7 and 0.8, below the cut: nothing found,
    # however close the others rank to it.
    assert search(tenant, unit(1, 1, 1, 1), min_relevance=0.9) == []
    assert search(tenant, unit(0, 1), min_relevance=0.9) == []
    assert search(tenant, unit(0, 1), min_relevance=0.8) == ["neighbour"]
