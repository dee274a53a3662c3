"""The vector leg's storage and cosine search.

Why not pgvector operators: the embedded PostgreSQL's pgvector 0.8.2 build executes an instruction
this CPU lacks as soon as a vector has more than 16 dimensions (distance, norm, cast, HNSW/IVFFlat
build: the backend dies with SIGILL and the whole server goes through crash recovery). Vectors are
therefore stored as float32 ``bytea`` on the chunk row and scored here with numpy: each process keeps
a read-only matrix per (tenant, model), reloaded when the tenant's ``vector_version`` (bumped in the
same transaction as every vector write or delete) has moved.

Search is exact (recall 1.0) for tenants under ``KNOWLEDGE_VECTOR_REDUCE_MIN`` vectors. A full scan
of a large tenant is memory-bound (193,000 x 384 float32 = 296 MB read per query, ~16 ms here), so a
larger tenant's matrix also gets a reduced copy when it is loaded: the rows' coordinates on their
principal directions (mean removed, PCA over a sample; d/6 dimensions, 64 for e5-small). A search
ranks every row on the reduced copy (a sixth of the memory traffic), re-ranks the best
``max(1000, 10 x limit, n / 40)`` exactly on the full vectors and returns true cosines. Measured on
real e5 vectors (docs/knowledge.md): recall@10 0.99 against the exact scan, where an inverted file
(k-means lists) reading 8 % of the rows reached only 0.78, e5's vectors sharing one narrow cone.
Every row is ranked, so a search returns k results whenever the tenant has k vectors.

Loading: one binary ``COPY`` of (id, vector) rows parsed by numpy. When the version moved because
vectors were *added* (a document being embedded batch by batch), only the new rows are fetched and
appended after the existing ones (projected on the same directions); a removal reloads all.
This relies on a chunk's vector of a given model never being rewritten: re-indexing replaces chunks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from psycopg import sql as pgsql

from knowledge.models import Chunk, LexicalStats

CHUNK = Chunk._meta.db_table
STATS = LexicalStats._meta.db_table


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def write_vectors(*, tenant_id: Any, ids: list[int], vectors: np.ndarray, model_id: str) -> None:
    """Store vectors on their chunks and bump the tenant's vector version (caller's transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {CHUNK} c SET embedding = v.e, embedding_model = %s
            FROM unnest(%s::bigint[], %s::bytea[]) AS v(id, e)
            WHERE c.id = v.id AND c.tenant_id = %s
            """,  # noqa: S608 (our table)
            [model_id, ids, [to_bytes(v) for v in vectors], tenant_id],
        )
    bump_version(tenant_id=tenant_id)


def bump_version(*, tenant_id: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {STATS} (tenant_id, chunk_count, total_length, vector_version)
            VALUES (%s, 0, 0, 1)
            ON CONFLICT (tenant_id) DO UPDATE SET vector_version = {STATS}.vector_version + 1
            """,  # noqa: S608 (our table)
            [tenant_id],
        )


@dataclass(frozen=True)
class Projection:
    """Principal directions of a tenant's vectors: ``reduce(x) = (x - mean) @ basis``."""

    mean: np.ndarray  # (d,) float32
    basis: np.ndarray  # (d, r) float32, orthonormal columns

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((vectors - self.mean) @ self.basis, dtype=np.float32)


@dataclass(frozen=True)
class VectorIndex:
    """One tenant's vectors of one model, as of one ``vector_version``: take it once per search
    (``index_for``) and ask it everything, so a search costs one version check and sees one state.

    ``positions`` (chunk id -> row) is shared with later snapshots of the same storage and may name
    rows past this snapshot's end."""

    version: int
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, L2-normalised
    positions: dict[int, int]
    projection: Projection | None = None
    reduced: np.ndarray | None = None  # (n, r): the rows projected, when the tenant is large

    def nearest(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` chunks closest to ``vector`` by cosine, best first (exact, or the best of the
        reduced ranking re-ranked exactly for a large tenant: see the module docstring)."""
        n = len(self.ids)
        if not n or self.vectors.shape[1] != vector.shape[0] or limit <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        limit = min(limit, n)
        pool = max(1000, 10 * limit, n // 40)
        if self.projection is None or self.reduced is None or pool >= n:
            rows = None
            scores = self.vectors @ query
        else:
            rough = self.reduced @ (self.projection.basis.T @ query)
            rows = np.argpartition(-rough, pool - 1)[:pool]
            scores = self.vectors[rows] @ query
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top], kind="stable")]
        chosen = top if rows is None else rows[top]
        return [(int(self.ids[i]), float(scores[j])) for i, j in zip(chosen, top, strict=True)]

    def _rows(self, ids: list[int]) -> list[tuple[int, int]]:
        n = len(self.ids)
        return [(i, p) for i in ids if (p := self.positions.get(i, n)) < n]

    def cosines(self, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Cosine of the given chunks (those that have a vector of this model)."""
        rows = self._rows(ids)
        if not rows or self.vectors.shape[1] != vector.shape[0]:
            return {}
        scores = self.vectors[[p for _, p in rows]] @ np.asarray(vector, dtype=np.float32)
        return {i: float(s) for (i, _), s in zip(rows, scores, strict=True)}

    def centroid(self, ids: list[int]) -> np.ndarray | None:
        """Mean vector of the given chunks (None when none of them has a vector of this model)."""
        rows = [p for _, p in self._rows(ids)]
        if not rows:
            return None
        return self.vectors[rows].mean(axis=0)


def project(vectors: np.ndarray, *, sample: int = 20000, seed: int = 0) -> Projection:
    """The mean and the top d/6 (at least 64) principal directions of the rows, from a sample of them
    (deterministic for given rows: every process ranks alike)."""
    n, dims = vectors.shape
    rng = np.random.default_rng(seed)
    rows = vectors[np.sort(rng.choice(n, size=min(n, sample), replace=False))].astype(np.float64)
    mean = rows.mean(axis=0)
    centred = rows - mean
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    rank = min(dims, max(64, dims // 6))
    basis = eigenvectors[:, ::-1][:, :rank]
    return Projection(mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32))


class _Storage:
    """Append-only rows behind a tenant's snapshots: snapshots view ``[:n]``; a refresh writes past
    the newest snapshot's end only (under the tenant's lock), so older snapshots never see a change."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, projection: Projection | None) -> None:
        n, dims = vectors.shape
        capacity = n + max(1024, n // 8)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.vectors = np.empty((capacity, dims), dtype=np.float32)
        self.ids[:n], self.vectors[:n] = ids, vectors
        self.projection = projection
        self.reduced: np.ndarray | None = None
        if projection is not None:
            self.reduced = np.empty((capacity, projection.basis.shape[1]), dtype=np.float32)
            for first in range(0, n, 65536):  # in blocks: no full-size float temporary
                self.reduced[first : min(n, first + 65536)] = projection.reduce(vectors[first : first + 65536])
        self.positions = {int(i): row for row, i in enumerate(ids.tolist())}
        self.size = n

    def snapshot(self, version: int) -> VectorIndex:
        n = self.size
        reduced = self.reduced[:n] if self.reduced is not None else None
        return VectorIndex(version, self.ids[:n], self.vectors[:n], self.positions, self.projection, reduced)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Add rows after the current ones; False when they do not fit (the caller reloads)."""
        n, m = self.size, len(ids)
        if n + m > len(self.ids) or vectors.shape[1] != self.vectors.shape[1]:
            return False
        self.ids[n : n + m], self.vectors[n : n + m] = ids, vectors
        if self.projection is not None and self.reduced is not None:
            self.reduced[n : n + m] = self.projection.reduce(vectors)
        for row, i in enumerate(ids.tolist(), start=n):
            self.positions[int(i)] = row
        self.size = n + m
        return True


_cache: dict[tuple[str, str], tuple[VectorIndex, _Storage | None]] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_lock = threading.Lock()


def _current_version(tenant_id: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT vector_version FROM {STATS} WHERE tenant_id = %s", [tenant_id])  # noqa: S608 (our table)
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def index_for(*, tenant_id: Any, model_id: str) -> VectorIndex:
    """The tenant's current vectors of ``model_id``: the process's cached copy unless the tenant's
    ``vector_version`` has moved since it was loaded (then the new rows only, when rows were only added)."""
    key = (str(tenant_id), model_id)
    version = _current_version(tenant_id)
    cached = _cache.get(key)
    if cached is not None and cached[0].version == version:
        return cached[0]
    with _lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # one refresh per tenant at a time; the others then find it done
        cached = _cache.get(key)
        if cached is not None and cached[0].version >= version:
            return cached[0]
        index, storage = _refresh(cached, tenant_id, model_id, version)
        _cache[key] = (index, storage)
        return index


def _refresh(
    cached: tuple[VectorIndex, _Storage | None] | None, tenant_id: Any, model_id: str, version: int
) -> tuple[VectorIndex, _Storage | None]:
    if cached is not None and (storage := cached[1]) is not None:
        old = cached[0]
        current = _embedded_ids(tenant_id, model_id)
        added = current[~np.isin(current, old.ids, assume_unique=True)]
        if len(current) - len(added) == len(old.ids):  # nothing removed: fetch what was added
            if not len(added):
                return storage.snapshot(version), storage
            new_ids, new_vectors = _fetch(tenant_id, model_id, added)
            if len(new_ids) == len(added) and storage.append(new_ids, new_vectors):
                return storage.snapshot(version), storage
    ids, vectors = _fetch(tenant_id, model_id)
    if not len(ids):
        return VectorIndex(version, ids, vectors, {}), None
    projection = project(vectors) if len(ids) >= int(settings.KNOWLEDGE_VECTOR_REDUCE_MIN) else None
    storage = _Storage(ids, vectors, projection)
    return storage.snapshot(version), storage


def _embedded_ids(tenant_id: Any, model_id: str) -> np.ndarray:
    """Ids of the tenant's chunks with a vector of this model, ascending (index-only scan)."""
    query = f"SELECT id FROM {CHUNK} WHERE tenant_id = %s AND embedding_model = %s AND embedding IS NOT NULL"  # noqa: S608
    return _parse(_copy_out(query + " ORDER BY id", [tenant_id, model_id]), with_vector=False)[0]


def _fetch(tenant_id: Any, model_id: str, only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the tenant's chunks embedded by this model (or of the ``only`` ids among them)."""
    query = (
        f"SELECT id, embedding FROM {CHUNK}"  # noqa: S608 (our table)
        " WHERE tenant_id = %s AND embedding_model = %s AND embedding IS NOT NULL"
    )
    params: list[Any] = [tenant_id, model_id]
    if only is not None:
        query, params = query + " AND id = ANY(%s)", [*params, only.tolist()]
    return _parse(_copy_out(query + " ORDER BY id", params), with_vector=True)


def _copy_out(query: str, params: list[Any]) -> bytes:
    """The binary COPY of ``query`` (``%s`` placeholders). The parameters are bound client-side into one
    statement because Django's debug cursor (DEBUG, or a test capturing queries) takes a statement only:
    passing them to ``copy()`` failed there, and the search answered without its vector leg."""
    with connection.cursor() as cursor:
        template = pgsql.SQL(f"COPY ({query}) TO STDOUT (FORMAT BINARY)".replace("%s", "{}"))
        statement = template.format(*map(pgsql.Literal, params)).as_string(cursor.cursor)
        with cursor.copy(statement) as copy:
            return b"".join(bytes(block) for block in copy)


_HEADER = 19  # PGCOPY signature (11) + flags (4) + header extension length (4)


def _parse(data: bytes, *, with_vector: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a binary COPY of (bigint id[, bytea float32 vector]) into arrays, without a Python
    loop: every row has the same width (one model: one dimension), else the data is refused."""
    body = memoryview(data)[_HEADER : len(data) - 2]  # minus the trailer (-1 as int16)
    if not len(body):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    fields: list[tuple[Any, ...]] = [("count", ">i2"), ("id_length", ">i4"), ("id", ">i8")]
    dims = 0
    if with_vector:
        dims = int.from_bytes(body[14:18], "big", signed=True) // 4
        fields += [("vector_length", ">i4"), ("vector", "<f4", (dims,))]
    row = np.dtype(fields)
    if len(body) % row.itemsize:
        raise ValueError("stored vectors of one model have different dimensions")
    rows = np.frombuffer(body, dtype=row)
    if with_vector and (rows["vector_length"] != dims * 4).any():
        raise ValueError("stored vectors of one model have different dimensions")
    vectors = np.ascontiguousarray(rows["vector"]) if with_vector else np.zeros((0, 0), dtype=np.float32)
    return rows["id"].astype(np.int64), vectors


def nearest(*, tenant_id: Any, model_id: str, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
    return index_for(tenant_id=tenant_id, model_id=model_id).nearest(vector, limit)


def cosines(*, tenant_id: Any, model_id: str, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
    return index_for(tenant_id=tenant_id, model_id=model_id).cosines(vector, ids)
