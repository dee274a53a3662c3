"""Migration knowledge 0006: a deployment's float32 ``bytea`` embeddings become pgvector vectors that
the search finds (with their HNSW index), and migrating back restores the same bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from knowledge import vectors
from knowledge.embedders import LOCAL_MODEL_ID


def migrate(target: list[tuple[str, str]] | None = None) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target or executor.loader.graph.leaf_nodes("knowledge"))


@pytest.mark.django_db(transaction=True)
def test_bytea_embeddings_become_searchable_vectors_and_back(make_tenant: Any) -> None:
    tenant = make_tenant("Legacy vectors")
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(5, 384)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    migrate([("knowledge", "0005_fair_indexing_queue")])
    try:
        with connection.cursor() as cursor:  # chunks as the previous schema stored them
            cursor.execute(
                """
                INSERT INTO knowledge_document (id, tenant_id, title, filename, format, size_bytes, sha256,
                    storage_name, status, error, chunks_total, chunks_embedded, tokens_total, embedding_model,
                    index_generation, created_at, updated_at, queued_at, index_attempts)
                VALUES (gen_random_uuid(), %s, 'Old', 'old.txt', 'text', 1, 'x', '-', 'indexed', '', 5, 5, 0, %s,
                        1, now(), now(), now(), 0)
                RETURNING id
                """,
                [tenant.pk, LOCAL_MODEL_ID],
            )
            document_id = cursor.fetchone()[0]
            cursor.execute(
                """
                INSERT INTO knowledge_chunk (tenant_id, document_id, position, content, section, token_count,
                    lexical_length, embedding, embedding_model)
                SELECT %s, %s, p, 'old chunk', '', 2, 2, e, %s
                FROM unnest(%s::int[], %s::bytea[]) AS v(p, e)
                RETURNING id
                """,
                [tenant.pk, document_id, LOCAL_MODEL_ID, list(range(5)), [m.astype("<f4").tobytes() for m in matrix]],
            )
            ids = sorted(row[0] for row in cursor.fetchall())

        migrate()

        got = vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=matrix[2], limit=5)
        assert got[0] == (ids[2], pytest.approx(1.0, abs=1e-6))
        assert len(got) == 5
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('chunk_embedding_hnsw_384'), to_regclass('chunk_embedding_hnsw_1536')")
            assert cursor.fetchone() == ("chunk_embedding_hnsw_384", "chunk_embedding_hnsw_1536")

        migrate([("knowledge", "0005_fair_indexing_queue")])
        with connection.cursor() as cursor:
            cursor.execute("SELECT embedding FROM knowledge_chunk WHERE tenant_id = %s ORDER BY id", [tenant.pk])
            assert [bytes(row[0]) for row in cursor.fetchall()] == [m.astype("<f4").tobytes() for m in matrix]
    finally:
        migrate()
