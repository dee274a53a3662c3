"""The vector leg: chunk embeddings in pgvector, searched inside PostgreSQL.

``Chunk.embedding`` is a ``vector`` without a fixed dimension (tenants on different models share
the table); each dimension of ``INDEXED_DIMENSIONS`` has a partial HNSW index (cosine) over the
column cast to it (migration knowledge 0007). A search for one tenant takes one of two paths,
chosen inside the statement (``vector_leg_sql``), so a serving process keeps no vector state:

- **HNSW** when its model's dimension is indexed and the graph walk is the cheaper path. The
  tenant filter is applied while the graph is walked, with pgvector's iterative scan
  (``hnsw.iterative_scan = relaxed_order``, set per connection in the settings): the scan goes on
  until it has ``limit`` rows of the tenant instead of stopping at ``ef_search`` candidates, most of
  them another tenant's. So its cost grows with ``limit`` / (the tenant's share of the table). The
  statement sets ``hnsw.ef_search`` for itself from the graph's size (KNOWLEDGE_HNSW_EF_SEARCH_SMALL
  under KNOWLEDGE_HNSW_SMALL_GRAPH_ROWS rows).
- **Exact**: the tenant's rows of that model through the ``chunk_embedded`` index, every distance
  computed; its cost grows with the tenant's rows n. Measured here (docs/knowledge.md): ~0.6 µs per
  row scanned exactly, ~10 µs per row the graph walk visits, so the exact scan is chosen when
  n ≤ ``KNOWLEDGE_VECTOR_EXACT_MAX`` or n² < ``KNOWLEDGE_VECTOR_HNSW_COST`` × limit × N (N: the
  table's rows, from the planner's statistics). It also runs when the HNSW scan came back short (it
  stops after ``hnsw.max_scan_tuples``), so a search returns ``limit`` rows whenever the tenant has them.

**A large tenant gets its own graph.** A shared graph walked with a tenant filter loses recall as the
tenant's share of the table falls (its neighbours connect through other tenants' nodes; measured at
1M chunks: recall@10 0.81 for a tenant holding 19 % of the rows, 0.73 for one holding 5 %), and
every visited row costs a heap fetch to check the tenant. So a tenant with at least
``KNOWLEDGE_VECTOR_TENANT_INDEX_MIN`` vectors of one dimension gets a partial HNSW index of its own
(``WHERE tenant_id = '<id>' AND vector_dims(embedding) = d``, built concurrently by
``ensure_tenant_indexes``, which the indexing task and an hourly beat task call; dropped when the
tenant is gone). The search's statement is planned with the tenant id's value (a literal, or the
parameter of a statement that is never prepared: config.db), so the planner matches that index and
walks the tenant's graph unfiltered (recall@10 1.0 at 48k rows, 0.985 at 193k with ef_search 200,
~3-11 ms), and such a tenant always takes the HNSW path.

Cosine similarity is ``1 - (a <=> b)``. Vectors are written as text (``[x,y,...]``) and read back in
pgvector's binary form (``vector_send``: int16 dimension, int16 unused, big-endian float4s).
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any
from uuid import UUID

import numpy as np
from django.conf import settings
from django.db import connection

from knowledge.models import Chunk, LexicalStats

logger = logging.getLogger(__name__)

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


def from_binary_many(blobs: list[bytes], dims: int) -> np.ndarray:
    """Vectors of ``dims`` dimensions from their binary forms, as one (n, dims) float32 matrix: the
    4-byte header of each is one float32 column, dropped."""
    return np.frombuffer(b"".join(blobs), dtype=">f4").reshape(len(blobs), dims + 1)[:, 1:].astype(np.float32)


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
    -- The graph's search list for this statement (set_config local: it ends with the statement's
    -- transaction), set before the HNSW scan reads it at its first row: a small graph needs less.
    SELECT set_config('hnsw.ef_search', (CASE WHEN (CASE WHEN own THEN n ELSE greatest(total, n) END)
                                                   < %(small_graph)s THEN %(ef_small)s ELSE %(ef)s END)::text, true) <> ''
           AND (own OR (n > %(exact_max)s AND n::float8 * n >= %(hnsw_cost)s * %(k)s * greatest(total, n))) AS large
    FROM (SELECT coalesce((SELECT chunk_count FROM {STATS} WHERE tenant_id = %(tenant)s), 0) AS n,
                 (SELECT reltuples FROM pg_class WHERE oid = '{CHUNK}'::regclass) AS total,
                 to_regclass(%(own_index)s) IS NOT NULL AS own) counts
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
        "own_index": tenant_index_name(tenant_id, len(vector)),
        "model": model_id,
        "qvec": to_text(vector),
        "k": limit,
        "exact_max": int(settings.KNOWLEDGE_VECTOR_EXACT_MAX),
        "hnsw_cost": float(settings.KNOWLEDGE_VECTOR_HNSW_COST),
        "ef": int(settings.KNOWLEDGE_HNSW_EF_SEARCH),
        "ef_small": int(settings.KNOWLEDGE_HNSW_EF_SEARCH_SMALL),
        "small_graph": int(settings.KNOWLEDGE_HNSW_SMALL_GRAPH_ROWS),
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


# --- a large tenant's own HNSW index ----------------------------------------------------------------

_TENANT_INDEX = re.compile(r"^chunk_hnsw_t([0-9a-f]{32})_(\d+)$")


def tenant_index_name(tenant_id: UUID | str, dims: int) -> str:
    return f"chunk_hnsw_t{UUID(str(tenant_id)).hex}_{int(dims)}"


def ensure_tenant_indexes(*, tenant_id: UUID | str | None = None, concurrently: bool = True) -> dict[str, int]:
    """Create the own HNSW index of every tenant (or of ``tenant_id``) that has at least
    KNOWLEDGE_VECTOR_TENANT_INDEX_MIN vectors of an indexed dimension and lacks it; drop the indexes
    of tenants that no longer exist. ``concurrently`` (outside a transaction): writes go on meanwhile.
    Returns {"created": n, "dropped": n}."""
    from tenants.models import Tenant

    minimum = int(settings.KNOWLEDGE_VECTOR_TENANT_INDEX_MIN)
    how = "CONCURRENTLY " if concurrently else ""
    filters, params = "", []
    if tenant_id is not None:
        filters, params = "AND tenant_id = %s", [str(tenant_id)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tenant_id, vector_dims(embedding) AS d FROM {CHUNK} "
            f"WHERE embedding IS NOT NULL AND vector_dims(embedding) = ANY(%s) {filters} "
            "GROUP BY 1, 2 HAVING count(*) >= %s",
            [list(INDEXED_DIMENSIONS), *params, minimum],
        )
        wanted = {tenant_index_name(t, d): (UUID(str(t)), int(d)) for t, d in cursor.fetchall()}
        cursor.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = %s::regclass AND c.relname LIKE 'chunk_hnsw_t%%'",
            [CHUNK],
        )
        valid = dict(cursor.fetchall())
    present = set(valid)
    created = dropped = 0
    for name, (tenant, dims) in sorted(wanted.items()):
        if valid.get(name):
            continue
        with connection.cursor() as cursor:
            if name in valid:  # a concurrent build that failed leaves an invalid index: build it again
                cursor.execute(f"DROP INDEX {how}IF EXISTS {name}")
            # The names and the dimension come from a UUID and an int: nothing else reaches the DDL.
            cursor.execute(
                f"CREATE INDEX {how}IF NOT EXISTS {name} ON {CHUNK} USING hnsw ((embedding::vector({dims})) "
                f"vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
                f"WHERE tenant_id = '{tenant}'::uuid AND vector_dims(embedding) = {dims}"
            )
        logger.info("tenant vector index created", extra={"tenant_id": str(tenant), "index": name})
        created += 1
    if tenant_id is None:
        existing = {t.hex for t in Tenant.objects.values_list("pk", flat=True)}
        for name in sorted(present):
            match = _TENANT_INDEX.match(name)
            if match and match.group(1) not in existing:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP INDEX {how}IF EXISTS {name}")
                logger.info("tenant vector index dropped", extra={"index": name})
                dropped += 1
    return {"created": created, "dropped": dropped}
