"""Retrieval under Django's debug cursor (DEBUG on, or a test capturing queries): the vector leg must
still answer there, and a hybrid search is two statements (both legs, then the chosen chunks)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from django.db import connection
from django.test.utils import CaptureQueriesContext

from knowledge import vectors
from knowledge.embedders import LOCAL_MODEL_ID
from knowledge.models import Chunk, Document
from knowledge.retrieval import hybrid_search

DIM = 384


def test_hybrid_search_answers_under_the_debug_cursor_in_two_statements(tenant: Any) -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(50, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    document = Document.objects.create(
        tenant=tenant, title="Returns policy", filename="returns.txt", format="text", size_bytes=0,
        sha256=uuid.uuid4().hex, storage_name="-", status="indexed", embedding_model=LOCAL_MODEL_ID,
    )  # fmt: skip
    chunks = Chunk.objects.bulk_create(
        [Chunk(tenant=tenant, document=document, position=i, content=f"part {i}", token_count=2) for i in range(50)]
    )
    vectors.write_vectors(tenant_id=tenant.pk, ids=[c.pk for c in chunks], vectors=matrix, model_id=LOCAL_MODEL_ID)

    with CaptureQueriesContext(connection) as captured:
        results = hybrid_search(tenant=tenant, query="part", k=3, query_vector=matrix[17], min_relevance=0)

    assert [r.chunk_id for r in results][:1] == [chunks[17].pk]
    assert results[0].content == "part 17"
    assert results[0].document_title == "Returns policy"
    assert results[0].scores["vector"] == 1.0
    assert len(captured.captured_queries) == 2
