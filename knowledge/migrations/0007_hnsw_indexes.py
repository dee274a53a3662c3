"""One partial HNSW index (cosine) per common embedding dimension, over the column cast to it:
``vector`` without a dimension cannot be indexed, and tenants on different models share the table.
knowledge.vectors.INDEXED_DIMENSIONS names the same dimensions; a vector of another dimension is
searched exactly within its tenant. Built concurrently: an existing deployment keeps writing.
"""

from django.db import migrations

DIMENSIONS = (384, 768, 1024, 1536)  # e5-small; nomic/e5-base; bge-m3/e5-large; OpenAI 3-small/ada-002


def _create(dims: int) -> str:
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS chunk_embedding_hnsw_{dims} ON knowledge_chunk"
        f" USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        f" WHERE vector_dims(embedding) = {dims}"
    )


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("knowledge", "0006_pgvector_embeddings")]

    operations = [
        migrations.RunSQL(_create(dims), reverse_sql=f"DROP INDEX CONCURRENTLY IF EXISTS chunk_embedding_hnsw_{dims}")
        for dims in DIMENSIONS
    ]
