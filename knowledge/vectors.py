"""The vector leg's storage and cosine search.

Why not pgvector operators: the embedded PostgreSQL's pgvector 0.8.2 build executes an instruction
this CPU lacks as soon as a vector has more than 16 dimensions (distance, norm, cast, HNSW/IVFFlat
build: the backend dies with SIGILL and the whole server goes through crash recovery). Vectors are
therefore stored as float32 ``bytea`` on the chunk row and scored here with numpy: each process keeps
a read-only matrix per (tenant, model), reloaded when the tenant's ``vector_version`` (bumped in the
same transaction as every vector write or delete) has moved.

Search is exact (recall 1.0) for tenants under ``KNOWLEDGE_VECTOR_PARTITION_MIN`` vectors. A larger
tenant's matrix is partitioned when it is loaded (an inverted file, IVF: spherical k-means into about
sqrt(n) lists, rows stored list by list), and a search scores only the lists whose centroids are
closest to the query until it has read ``KNOWLEDGE_VECTOR_PROBE_FRACTION`` of the rows: a fraction
of the memory traffic of a full scan, measured recall@10 in docs/knowledge.md. Lists are read until
they hold at least ``limit`` rows, so a search still returns k results when the tenant has k vectors.

Loading: one binary ``COPY`` of (id, vector) rows parsed by numpy. When the version moved because
vectors were *added* (a document being embedded batch by batch), only the new rows are fetched and
appended after the existing ones (scanned exactly until the next full load); a removal reloads all.
This relies on a chunk's vector of a given model never being rewritten: re-indexing replaces chunks.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
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
class Partitions:
    """An inverted file over a matrix whose rows are stored list by list: list ``j`` is rows
    ``bounds[j]:bounds[j + 1]``, ``centroids[j]`` its (normalised) mean direction."""

    centroids: np.ndarray  # (lists, d) float32
    bounds: np.ndarray  # (lists + 1,) int64


@dataclass(frozen=True)
class VectorIndex:
    """One tenant's vectors of one model, as of one ``vector_version``: take it once per search
    (``index_for``) and ask it everything, so a search costs one version check and sees one state.

    Rows ``[0, partitions.bounds[-1])`` are partitioned (when ``partitions`` is set); rows appended
    since the last full load follow them and are always scanned. ``positions`` (chunk id -> row) is
    shared with later snapshots of the same storage and may name rows past this snapshot's end."""

    version: int
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, L2-normalised
    positions: dict[int, int]
    partitions: Partitions | None = None

    def nearest(self, vector: np.ndarray, limit: int, *, exact: bool = False) -> list[tuple[int, float]]:
        """The ``limit`` chunks closest to ``vector`` by cosine, best first (exact unless the matrix
        is partitioned and ``exact`` is false: then the closest lists, see the module docstring)."""
        if not len(self.ids) or self.vectors.shape[1] != vector.shape[0] or limit <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        if self.partitions is None or exact:
            rows: np.ndarray | None = None
            scores = self.vectors @ query
        else:
            rows, scores = self._probe(query, limit)
        limit = min(limit, len(scores))
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top], kind="stable")]
        chosen = top if rows is None else rows[top]
        return [(int(self.ids[i]), float(scores[j])) for i, j in zip(chosen, top, strict=True)]

    def _probe(self, query: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the lists closest to the query until the budget of rows is read, and
        of the rows appended since the partitioning."""
        assert self.partitions is not None
        bounds = self.partitions.bounds
        budget = max(limit, math.ceil(float(settings.KNOWLEDGE_VECTOR_PROBE_FRACTION) * len(self.ids)))
        order = np.argsort(-(self.partitions.centroids @ query))
        sizes = bounds[order + 1] - bounds[order]
        probed = order[: int(np.searchsorted(np.cumsum(sizes), budget)) + 1]
        probed.sort()  # neighbouring lists are neighbouring memory: read them in one pass where they touch
        spans: list[tuple[int, int]] = []
        for j in probed.tolist():
            if spans and spans[-1][1] == bounds[j]:
                spans[-1] = (spans[-1][0], int(bounds[j + 1]))
            else:
                spans.append((int(bounds[j]), int(bounds[j + 1])))
        if len(self.ids) > bounds[-1]:
            spans.append((int(bounds[-1]), len(self.ids)))
        rows = np.concatenate([np.arange(a, b) for a, b in spans])
        scores = np.concatenate([self.vectors[a:b] @ query for a, b in spans])
        return rows, scores

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


def partition(ids: np.ndarray, vectors: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Partitions]:
    """Spherical k-means into about sqrt(n) lists; returns (ids, vectors) reordered list by list and
    the partitions. Deterministic for given rows (fixed seed): every process builds the same lists.

    Trained on a sample (64 rows per list, 8 Lloyd iterations), then every row goes to its closest
    centroid, in blocks so the (rows x lists) score matrix stays small."""
    n, _ = vectors.shape
    lists = max(1, int(math.sqrt(n)))
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))]
    centroids = sample[rng.choice(len(sample), size=lists, replace=False)].copy()
    for _ in range(8):
        assign = np.argmax(sample @ centroids.T, axis=1)
        centroids = _means(sample, assign, centroids, rng)
    assign = np.empty(n, dtype=np.int64)
    for first in range(0, n, 16384):
        assign[first : first + 16384] = np.argmax(vectors[first : first + 16384] @ centroids.T, axis=1)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(lists + 1)).astype(np.int64)
    return ids[order], np.ascontiguousarray(vectors[order]), Partitions(centroids, bounds)


def _means(sample: np.ndarray, assign: np.ndarray, centroids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalised mean of each list's rows; an empty list takes a random sample row instead."""
    order = np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=len(centroids))
    out = sample[rng.choice(len(sample), size=len(centroids))].copy()  # the empty lists keep these
    filled = np.flatnonzero(counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[filled]
    out[filled] = np.add.reduceat(sample[order], starts, axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class _Storage:
    """Append-only rows behind a tenant's snapshots: snapshots view ``[:n]``; a refresh writes past
    the newest snapshot's end only (under ``lock``), so older snapshots never see a change."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, partitions: Partitions | None) -> None:
        n, dims = vectors.shape
        capacity = n + max(1024, n // 8)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.vectors = np.empty((capacity, dims), dtype=np.float32)
        self.ids[:n], self.vectors[:n] = ids, vectors
        self.positions = {int(i): row for row, i in enumerate(ids.tolist())}
        self.partitions = partitions
        self.size = n

    def snapshot(self, version: int) -> VectorIndex:
        n = self.size
        return VectorIndex(version, self.ids[:n], self.vectors[:n], self.positions, self.partitions)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Add rows after the current ones; False when they do not fit (the caller reloads)."""
        n, m = self.size, len(ids)
        if n + m > len(self.ids) or vectors.shape[1] != self.vectors.shape[1]:
            return False
        self.ids[n : n + m], self.vectors[n : n + m] = ids, vectors
        for row, i in enumerate(ids.tolist(), start=n):
            self.positions[int(i)] = row
        self.size = n + m
        return True


_cache: dict[tuple[str, str], tuple[VectorIndex, _Storage | None]] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_lock = threading.Lock()


def _current_version(tenant_id: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT vector_version FROM knowledge_lexicalstats WHERE tenant_id = %s", [tenant_id])
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
    if cached is not None and cached[1] is not None:
        old, storage = cached
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
    partitions = None
    if len(ids) >= int(settings.KNOWLEDGE_VECTOR_PARTITION_MIN):
        ids, vectors, partitions = partition(ids, vectors)
    storage = _Storage(ids, vectors, partitions)
    return storage.snapshot(version), storage


def _embedded_ids(tenant_id: Any, model_id: str) -> np.ndarray:
    """Ids of the tenant's chunks with a vector of this model, ascending (index-only scan)."""
    sql = "SELECT id FROM knowledge_chunk WHERE tenant_id = %s AND embedding_model = %s AND embedding IS NOT NULL"
    return _parse(_copy_out(sql + " ORDER BY id", [tenant_id, model_id]), with_vector=False)[0]


def _fetch(tenant_id: Any, model_id: str, only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the tenant's chunks embedded by this model (or of the ``only`` ids among them)."""
    sql = (
        "SELECT id, embedding FROM knowledge_chunk"
        " WHERE tenant_id = %s AND embedding_model = %s AND embedding IS NOT NULL"
    )
    params: list[Any] = [tenant_id, model_id]
    if only is not None:
        sql, params = sql + " AND id = ANY(%s)", [*params, only.tolist()]
    return _parse(_copy_out(sql + " ORDER BY id", params), with_vector=True)


def _copy_out(sql: str, params: list[Any]) -> bytes:
    with connection.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy:
        return b"".join(bytes(block) for block in copy)


_HEADER = 19  # PGCOPY signature (11) + flags (4) + header extension length (4)


def _parse(data: bytes, *, with_vector: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a binary COPY of (bigint id[, bytea float32 vector]) into arrays, without a Python
    loop: every row has the same width (one model: one dimension), else the data is refused."""
    body = memoryview(data)[_HEADER : len(data) - 2]  # minus the trailer (-1 as int16)
    if not len(body):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    fields = [("count", ">i2"), ("id_length", ">i4"), ("id", ">i8")]
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
