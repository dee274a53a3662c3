"""The vector leg: chunk embeddings in pgvector, searched inside PostgreSQL.

``Chunk.embedding`` is a ``vector`` without a fixed dimension (tenants on different models share
the table); each dimension of ``INDEXED_DIMENSIONS`` has a partial HNSW index (cosine) over the
column cast to it (migration knowledge 0007). A search for one tenant takes one of two paths,
chosen inside the statement (``vector_leg_sql``), so a serving process keeps no vector state:

- **HNSW** when its model's dimension is indexed and the graph walk is the cheaper path. The
  tenant filter is applied while the graph is walked, with pgvector's iterative scan
  (``hnsw.iterative_scan = relaxed_order``, set per connection in the settings): the scan goes on
  until it has ``limit`` rows of the tenant instead of stopping at ``ef_search`` candidates, most of
  them another tenant's. So its cost grows with ``limit`` / (the tenant's share of the table).
- **Exact**: the tenant's rows of that model through the ``chunk_embedded`` index, every distance
  computed; its cost grows with the tenant's rows n. Measured here (docs/knowledge.md): ~0.6 µs per
  row scanned exactly, ~10 µs per row the graph walk visits, so the exact scan is chosen when
  n ≤ ``KNOWLEDGE_VECTOR_EXACT_MAX`` or n² < ``KNOWLEDGE_VECTOR_HNSW_COST`` × limit × N (N: the
  table's rows, from the planner's statistics). It also runs when the HNSW scan came back short (it
  stops after ``hnsw.max_scan_tuples``), so a search returns ``limit`` rows whenever the tenant has them.

Cosine similarity is ``1 - (a <=> b)``. Vectors are written as text (``[x,y,...]``) and read back in
pgvector's binary form (``vector_send``: int16 dimension, int16 unused, big-endian float4s).
"""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

import numpy as np
from django.conf import settings
from django.db import connection

from knowledge.models import Chunk, LexicalStats

CHUNK = Chunk._meta.db_table
STATS = LexicalStats._meta.db_table
# The same list as migration knowledge 0007 (a partial HNSW index per dimension).
INDEXED_DIMENSIONS = (384, 768, 1024, 1536)


def to_text(vector: np.ndarray) -> str:
    """pgvector's text form of a vector (float32 values, shortest round-trip repr)."""
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def from_binary(data: bytes | memoryview) -> np.ndarray:
    """A vector from pgvector's binary form (``vector_send``)."""
    return np.frombuffer(bytes(data), dtype=">f4", offset=4).astype(np.float32)


def write_vectors(*, tenant_id: UUID, ids: list[int], vectors: np.ndarray, model_id: str) -> None:
    """Store vectors on their chunks (the caller's transaction); searches see them at commit."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {CHUNK} c SET embedding = v.e::vector, embedding_model = %s
            FROM unnest(%s::bigint[], %s::text[]) AS v(id, e)
            WHERE c.id = v.id AND c.tenant_id = %s
            """,
            [model_id, ids, [to_text(v) for v in vectors], tenant_id],
        )


@cache
def vector_leg_sql(dims: int) -> str:
    """CTEs ``vstats``, ``ann``, ``exact`` and ``vec`` (id, distance): the tenant's ``%(k)s`` nearest
    chunks of model ``%(model)s`` to ``%(qvec)s`` (text), for vectors of ``dims`` dimensions. The
    path not taken is skipped by PostgreSQL (a one-time filter), not run and discarded."""
    if dims in INDEXED_DIMENSIONS:
        typed = f"vector({dims})"
        ann = f"""
    SELECT c.id, c.embedding::{typed} <=> %(qvec)s::{typed} AS distance
    FROM {CHUNK} c
    WHERE (SELECT large FROM vstats) AND c.tenant_id = %(tenant)s AND c.embedding_model = %(model)s
      AND vector_dims(c.embedding) = {dims}
    ORDER BY c.embedding::{typed} <=> %(qvec)s::{typed}
    LIMIT %(k)s"""
    else:  # no index for this dimension: always the exact scan
        ann = "SELECT NULL::bigint AS id, NULL::float8 AS distance WHERE false"
    return f"""
vstats AS MATERIALIZED (
    SELECT n > %(exact_max)s AND n::float8 * n >= %(hnsw_cost)s * %(k)s * greatest(total, n) AS large
    FROM (SELECT coalesce((SELECT chunk_count FROM {STATS} WHERE tenant_id = %(tenant)s), 0) AS n,
                 (SELECT reltuples FROM pg_class WHERE oid = '{CHUNK}'::regclass) AS total) counts
), ann AS MATERIALIZED ({ann}
), exact AS MATERIALIZED (
    SELECT c.id, c.embedding <=> %(qvec)s::vector AS distance
    FROM {CHUNK} c
    WHERE c.tenant_id = %(tenant)s AND c.embedding_model = %(model)s AND c.embedding IS NOT NULL
      AND (NOT (SELECT large FROM vstats) OR (SELECT count(*) FROM ann) < %(k)s)
    ORDER BY 2
    LIMIT %(k)s
), vec AS (
    SELECT id, distance FROM ann WHERE (SELECT count(*) FROM ann) >= %(k)s
    UNION ALL
    SELECT id, distance FROM exact
)"""


def vector_leg_params(*, tenant_id: UUID, model_id: str, vector: np.ndarray, limit: int) -> dict[str, Any]:
    return {
        "tenant": tenant_id,
        "model": model_id,
        "qvec": to_text(vector),
        "k": limit,
        "exact_max": int(settings.KNOWLEDGE_VECTOR_EXACT_MAX),
        "hnsw_cost": float(settings.KNOWLEDGE_VECTOR_HNSW_COST),
    }


def nearest(*, tenant_id: UUID, model_id: str, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """The tenant's ``limit`` chunks of ``model_id`` closest to ``vector`` by cosine, best first."""
    if limit <= 0:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {vector_leg_sql(len(vector))} SELECT id, 1 - distance FROM vec ORDER BY distance, id",
            vector_leg_params(tenant_id=tenant_id, model_id=model_id, vector=vector, limit=limit),
        )
        return [(int(i), float(s)) for i, s in cursor.fetchall()]


def cosines(*, tenant_id: UUID, model_id: str, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
    """Cosine of the given chunks (those of the tenant that have a vector of this model)."""
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT id, 1 - (embedding <=> %s::vector) FROM {CHUNK}
            WHERE tenant_id = %s AND id = ANY(%s) AND embedding_model = %s AND vector_dims(embedding) = %s
            """,
            [to_text(vector), tenant_id, ids, model_id, len(vector)],
        )
        return {int(i): float(s) for i, s in cursor.fetchall()}
