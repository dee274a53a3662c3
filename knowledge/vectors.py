"""The vector leg's storage and exact cosine search.

Why not pgvector operators: the embedded PostgreSQL's pgvector 0.8.2 build executes an instruction
this CPU lacks as soon as a vector has more than 16 dimensions (distance, norm, cast, HNSW/IVFFlat
build: the backend dies with SIGILL and the whole server goes through crash recovery). Vectors are
therefore stored as float32 ``bytea`` on the chunk row and scored here with numpy: each process keeps
a read-only matrix per (tenant, model), reloaded when the tenant's ``vector_version`` (bumped in the
same transaction as every vector write or delete) has moved. Search is exact: recall 1.0 and always
k results when the tenant has k embedded chunks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def write_vectors(*, tenant_id: Any, ids: list[int], vectors: np.ndarray, model_id: str) -> None:
    """Store vectors on their chunks and bump the tenant's vector version (caller's transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE knowledge_chunk c SET embedding = v.e, embedding_model = %s
            FROM unnest(%s::bigint[], %s::bytea[]) AS v(id, e)
            WHERE c.id = v.id AND c.tenant_id = %s
            """,
            [model_id, ids, [to_bytes(v) for v in vectors], tenant_id],
        )
    bump_version(tenant_id=tenant_id)


def bump_version(*, tenant_id: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO knowledge_lexicalstats (tenant_id, chunk_count, total_length, vector_version)
            VALUES (%s, 0, 0, 1)
            ON CONFLICT (tenant_id) DO UPDATE SET vector_version = knowledge_lexicalstats.vector_version + 1
            """,
            [tenant_id],
        )


@dataclass(frozen=True)
class VectorIndex:
    """One tenant's vectors of one model, as of one ``vector_version``: take it once per search
    (``index_for``) and ask it everything, so a search costs one version check and sees one state."""

    version: int
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, L2-normalised
    positions: dict[int, int]

    def nearest(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` chunks closest to ``vector`` by cosine, best first (exact)."""
        if not len(self.ids) or self.vectors.shape[1] != vector.shape[0]:
            return []
        scores = self.vectors @ np.asarray(vector, dtype=np.float32)
        limit = min(limit, len(scores))
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top]

    def cosines(self, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Cosine of the given chunks (those that have a vector of this model)."""
        rows = [(i, self.positions[i]) for i in ids if i in self.positions]
        if not rows or self.vectors.shape[1] != vector.shape[0]:
            return {}
        scores = self.vectors[[p for _, p in rows]] @ np.asarray(vector, dtype=np.float32)
        return {i: float(s) for (i, _), s in zip(rows, scores, strict=True)}

    def centroid(self, ids: list[int]) -> np.ndarray | None:
        """Mean vector of the given chunks (None when none of them has a vector of this model)."""
        rows = [self.positions[i] for i in ids if i in self.positions]
        if not rows:
            return None
        return self.vectors[rows].mean(axis=0)


_cache: dict[tuple[str, str], VectorIndex] = {}
_lock = threading.Lock()


def _current_version(tenant_id: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT vector_version FROM knowledge_lexicalstats WHERE tenant_id = %s", [tenant_id])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def index_for(*, tenant_id: Any, model_id: str) -> VectorIndex:
    """The tenant's current vectors of ``model_id``: the process's cached copy unless the tenant's
    ``vector_version`` has moved since it was loaded."""
    key = (str(tenant_id), model_id)
    version = _current_version(tenant_id)
    cached = _cache.get(key)
    if cached is not None and cached.version == version:
        return cached
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT id, embedding FROM knowledge_chunk
            WHERE tenant_id = %s AND embedding_model = %s AND embedding IS NOT NULL ORDER BY id
            """,
            [tenant_id, model_id],
        )
        rows = cursor.fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if rows:
        vectors = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4").reshape(len(rows), -1)
    else:
        vectors = np.zeros((0, 0), dtype=np.float32)
    index = VectorIndex(version, ids, vectors, {int(i): n for n, i in enumerate(ids)})
    with _lock:
        _cache[key] = index
    return index


def nearest(*, tenant_id: Any, model_id: str, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
    return index_for(tenant_id=tenant_id, model_id=model_id).nearest(vector, limit)


def cosines(*, tenant_id: Any, model_id: str, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
    return index_for(tenant_id=tenant_id, model_id=model_id).cosines(vector, ids)
