"""Hybrid retrieval: BM25 keyword leg and pgvector cosine leg in one SQL statement, fused per query.

1. Each leg returns its top candidates for the tenant: the keyword leg its top KNOWLEDGE_CANDIDATES
   from the tenant's postings (knowledge.lexical), the vector leg its top KNOWLEDGE_VECTOR_CANDIDATES
   through the HNSW index of its dimension or an exact scan of the tenant's rows (knowledge.vectors).
2. Every candidate of the union gets both scores exactly (its cosine, its BM25, computed in the
   same statement), so a chunk found by one leg is not a zero for the other.
3. Per-query normalisation (BM25 / max BM25; min-max of cosines), then the tenant's
   ``hybridWeights`` (or reciprocal rank fusion when ``fusion`` is "rrf") give the ranking score.
4. Pseudo-relevance feedback: the query vector moves towards the mean of the top 3 fused results
   (Rocchio, weight 0.5) and the candidates are ranked again (KNOWLEDGE_PRF_DOCS / _WEIGHT), on the
   candidates' vectors the statement returned.
5. ``score`` is a calibrated relevance in 0..1 that ``minSimilarity`` cuts on: the calibrated
   cosine (e5: the margin over the query's own similarity to unrelated text, knowledge.background;
   other embedders: Embedder.calibration), or the keyword coverage (share of the query's idf mass
   the chunk contains) when higher. Nothing passing: ``[]``. With weighted fusion, a chunk ranked
   close to the best chunk that passes (fused score at least KNOWLEDGE_NEAR_BEST of its score) comes
   along: the cut says whether the search found something, the ranking what else belongs with it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import connection

from config.db import compact_sql, server_bound_cursor
from knowledge import background, queries, vectors
from knowledge.embedders import Embedder, EmbeddingError, get_embedder
from knowledge.lexical import keyword_query, keyword_search, text_search_config
from knowledge.metrics import retrieval_duration
from knowledge.models import Chunk, Document

if TYPE_CHECKING:
    from tenants.models import Tenant

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2000
RRF_K = 60


@dataclass
class RetrievedChunk:
    chunk_id: int
    document_id: uuid.UUID
    document_title: str
    content: str
    page: int | None
    section: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    position: int = 0


def search(*, tenant: Tenant, query: str, k: int | None = None) -> list[RetrievedChunk]:
    """The tenant's top chunks for ``query`` with its ragConfig; [] when nothing is relevant enough."""
    rag = tenant.config.rag_config
    started = time.perf_counter()
    chunks = hybrid_search(
        tenant=tenant,
        query=query,
        k=k or rag.top_k,
        keyword_weight=rag.hybrid_weights.keyword,
        vector_weight=rag.hybrid_weights.vector,
        fusion=rag.fusion,
        min_relevance=rag.min_similarity,
    )
    retrieval_duration.observe(time.perf_counter() - started)
    return chunks


@dataclass
class _Pool:
    """A search's candidates as columns (one row per chunk): both legs' scores, and each chunk's vector
    for the feedback step when the statement returned it. NumPy arrays, so that fusing, the feedback
    step and the relevance cut cost a few array operations, not Python work per candidate."""

    ids: np.ndarray  # int64
    bm25: np.ndarray  # float64; 0: no keyword match
    coverage: np.ndarray  # float64 in 0..1
    cosine: np.ndarray  # float64; NaN: no vector of the query's model
    # float32 (n, dims), the feedback step's: the statement returns a vector with every cosine (rows
    # without a cosine are 0 here).
    vectors: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        ids: list[int],
        bm25: list[float] | None = None,
        coverage: list[float] | None = None,
        cosine: list[float | None] | None = None,
    ) -> _Pool:
        n = len(ids)
        return cls(
            np.asarray(ids, dtype=np.int64),
            np.asarray(bm25 if bm25 is not None else [0.0] * n, dtype=np.float64),
            np.minimum(np.asarray(coverage if coverage is not None else [0.0] * n, dtype=np.float64), 1.0),
            np.asarray(
                [np.nan if c is None else c for c in cosine] if cosine is not None else [np.nan] * n, dtype=np.float64
            ),
        )

    def __len__(self) -> int:
        return len(self.ids)


def hybrid_search(
    *,
    tenant: Tenant,
    query: str,
    k: int,
    keyword_weight: float = 0.3,
    vector_weight: float = 0.7,
    fusion: str = "weighted",
    min_relevance: float = 0.0,
    candidates: int | None = None,
    query_vector: np.ndarray | None = None,
    embedder: Embedder | None = None,
) -> list[RetrievedChunk]:
    """Hybrid search with explicit parameters (``search`` passes the tenant's ragConfig).

    ``keyword_weight=0`` or ``vector_weight=0`` turns a leg off (the benchmark measures legs alone).
    """
    query = (query or "").strip()[:MAX_QUERY_CHARS]
    if not query or k <= 0:
        return []
    depth = max(candidates or settings.KNOWLEDGE_CANDIDATES, k)
    # The vector leg's own depth: its HNSW walk costs in proportion to it (knowledge.vectors).
    vector_depth = max(candidates or min(depth, settings.KNOWLEDGE_VECTOR_CANDIDATES), k)
    vector: np.ndarray | None = None
    model_id = ""
    calibration = (0.0, 1.0)

    # No transaction: one statement reads both legs, and a chunk deleted before the results are
    # loaded is skipped then.
    if vector_weight > 0:
        try:
            embedder = embedder or get_embedder(tenant=tenant)
            calibration, model_id = embedder.calibration, embedder.model_id
            vector = query_vector if query_vector is not None else embedder.embed_query(query)
            calibration = background.calibration_for(embedder, vector) or calibration
        except EmbeddingError as exc:
            vector = None  # the keyword leg still answers
            logger.warning("vector leg skipped", extra={"tenant_id": str(tenant.pk), "error": str(exc)})
    if vector is not None and keyword_weight > 0:
        pool = _both_legs(tenant, query, vector, model_id, depth, vector_depth)
    elif vector is not None:
        found = vectors.nearest(tenant_id=tenant.pk, model_id=model_id, vector=vector, limit=vector_depth)
        pool = _Pool.of([i for i, _ in found], cosine=[c for _, c in found])
    elif keyword_weight > 0 or vector_weight > 0:  # vectors unavailable: the keyword leg alone
        config = text_search_config(tenant=tenant)
        hits = keyword_search(tenant_id=tenant.pk, query=query, config=config, limit=depth)
        pool = _Pool.of([h.chunk_id for h in hits], [h.bm25 for h in hits], [h.coverage for h in hits])
    else:
        return []
    if not len(pool):
        return []

    order, fused = _fuse(pool, keyword_weight, vector_weight, fusion, vector)
    prf_docs, prf_weight = settings.KNOWLEDGE_PRF_DOCS, settings.KNOWLEDGE_PRF_WEIGHT
    if keyword_weight > 0 and vector is not None and 0 < prf_docs < len(pool) and prf_weight > 0:
        order, fused = _feedback_rerank(pool, order, fused, vector, keyword_weight, vector_weight, fusion)
    low, high = calibration
    relevance = _relevance(pool, keyword_weight > 0, vector_weight > 0 and vector is not None, low, high)[order]
    fused = fused[order]
    passing = relevance >= min_relevance
    if not passing.any():
        return []
    best = fused[int(np.argmax(passing))]  # the best-ranked chunk that passes
    # Reciprocal rank fusion's scores carry ranks, not how close a chunk is: its cut stays the plain one.
    near = best * settings.KNOWLEDGE_NEAR_BEST if fusion != "rrf" else float("inf")
    kept = np.flatnonzero(passing | (fused >= near))[:k]
    return _materialise(tenant, pool, [(int(order[i]), float(fused[i]), float(relevance[i])) for i in kept])


def _both_legs(tenant: Tenant, query: str, vector: np.ndarray, model_id: str, depth: int, vector_depth: int) -> _Pool:
    """Both legs' candidates with both scores (and their vectors) from one statement: the vector leg's
    first, then the keyword leg's own top ``depth`` (its statement rescored up to twice as many; only
    the top ``depth`` besides the vector leg's are loaded, scored against the query vector and sent)."""
    _, params = keyword_query(tenant_id=tenant.pk, query=query, config=text_search_config(tenant=tenant), limit=depth)
    params.update(vectors.vector_leg_params(tenant_id=tenant.pk, model_id=model_id, vector=vector, limit=vector_depth))
    params["feedback"] = settings.KNOWLEDGE_PRF_DOCS > 0 and settings.KNOWLEDGE_PRF_WEIGHT > 0
    params["limit"] = depth
    with server_bound_cursor(binary=True) as cursor:
        cursor.execute(_hybrid_sql(len(vector)), params)
        rows = cursor.fetchall()
    # A fixed row order (vector leg's first, then keyword by score): the feedback's mean vector sums in
    # it, and its last bits decide between chunks of equal score.
    keyword_only = sorted((row for row in rows if not row[1]), key=lambda row: (-(row[2] or 0.0), row[0]))
    rows = [row for row in rows if row[1]] + keyword_only
    if not rows:
        return _Pool.of([])
    ids, _, bm25, coverage, cosine, blobs = zip(*rows, strict=True)
    pool = _Pool.of(list(ids), [b or 0.0 for b in bm25], [c or 0.0 for c in coverage], list(cosine))
    returned = [blob for blob in blobs if blob is not None]
    if returned:
        pool.vectors = np.zeros((len(blobs), len(vector)), dtype=np.float32)
        pool.vectors[~np.isnan(pool.cosine)] = vectors.from_binary_many(returned, len(vector))
    return pool


@cache
def _hybrid_sql(dims: int) -> str:
    """The vector leg's CTEs, then the keyword leg's statement with the vector candidates as the ids
    it scores besides its own top, then every candidate's cosine (and vector, for the feedback)."""
    keyword = queries.KEYWORD_BM25.replace("SELECT unnest(%(ids)s::bigint[])", "SELECT id FROM vec")
    assert keyword != queries.KEYWORD_BM25, "the keyword statement no longer takes extra ids"
    return compact_sql(f"""
WITH {vectors.vector_leg_sql(dims)}, kw (chunk_id, score, coverage) AS ({keyword}
), candidates AS (
    -- The keyword leg's own top %(limit)s besides the vector leg's: what the ranking keeps of its pool.
    SELECT id FROM vec
    UNION (SELECT chunk_id FROM kw WHERE chunk_id NOT IN (SELECT id FROM vec) ORDER BY score DESC, chunk_id LIMIT %(limit)s)
)
SELECT c.id, c.id IN (SELECT id FROM vec), kw.score, kw.coverage, sim.cosine,
       CASE WHEN %(feedback)s AND sim.cosine IS NOT NULL THEN vector_send(c.embedding) END
FROM candidates JOIN {Chunk._meta.db_table} c ON c.tenant_id = %(tenant)s AND c.id = candidates.id
LEFT JOIN kw ON kw.chunk_id = c.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN c.embedding_model = %(model)s AND vector_dims(c.embedding) = {dims}
                THEN 1 - (c.embedding <=> %(qvec)s::vector) END AS cosine
) sim
""")  # noqa: S608 (our tables; dims is an int)


def _feedback_rerank(
    pool: _Pool,
    order: np.ndarray,
    fused: np.ndarray,
    vector: np.ndarray,
    keyword_weight: float,
    vector_weight: float,
    fusion: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-relevance feedback on the vector leg (Rocchio): move the query vector towards the
    mean of the top fused results and rank the candidates again with it. The candidates' reported
    cosine (and so their calibrated relevance) stays the one of the original query."""
    if pool.vectors is None:
        return order, fused
    has_vector = ~np.isnan(pool.cosine)
    top = [i for i in order[: settings.KNOWLEDGE_PRF_DOCS] if has_vector[i]]
    if not top:
        return order, fused
    moved = vector + settings.KNOWLEDGE_PRF_WEIGHT * pool.vectors[top].mean(axis=0)
    moved = moved / (np.linalg.norm(moved) or 1.0)
    shadow = _Pool(pool.ids, pool.bm25, pool.coverage, np.where(has_vector, pool.vectors @ moved, pool.cosine))
    return _fuse(shadow, keyword_weight, vector_weight, fusion, moved)


def _fuse(
    pool: _Pool, keyword_weight: float, vector_weight: float, fusion: str, vector: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' fused scores (indexed like the pool) and the ranking (row indices, best first;
    ties by chunk id)."""
    if vector is None:
        vector_weight = 0.0
    if keyword_weight == 0 and vector_weight == 0:
        keyword_weight = 1.0  # vectors not available (not embedded yet / embedder down): keyword only
    has_cosine = ~np.isnan(pool.cosine)
    if fusion == "rrf":
        n = len(pool)
        by_kw, by_vec = np.empty(n), np.empty(n)
        by_kw[np.argsort(-pool.bm25, kind="stable")] = np.arange(n)
        by_vec[np.argsort(-np.where(has_cosine, pool.cosine, -2.0), kind="stable")] = np.arange(n)
        fused = np.where(pool.bm25 > 0, keyword_weight / (RRF_K + by_kw + 1), 0.0)
        fused = fused + np.where(has_cosine, vector_weight / (RRF_K + by_vec + 1), 0.0)
    else:
        max_bm25 = float(pool.bm25.max(initial=0.0)) or 1.0
        sims = pool.cosine[has_cosine]
        low, high = (float(sims.min()), float(sims.max())) if len(sims) else (0.0, 1.0)
        span = (high - low) or 1.0
        kw = pool.bm25 / max_bm25
        vec = np.where(has_cosine, (pool.cosine - low) / span, 0.0)
        fused = (keyword_weight * kw + vector_weight * vec) / (keyword_weight + vector_weight)
    return np.lexsort((pool.ids, -fused)), fused


def _relevance(pool: _Pool, keyword_on: bool, vector_on: bool, low: float, high: float) -> np.ndarray:
    """Query-independent relevance in 0..1 per candidate: the embedder-calibrated cosine, or the
    keyword coverage (share of the query's idf mass in the chunk) when that is higher: an exact match
    of rare terms (a product code, a name) the embedding misses still counts as relevant."""
    if not vector_on:
        return pool.coverage
    calibrated = np.clip((pool.cosine - low) / ((high - low) or 1.0), 0.0, 1.0)
    if keyword_on:
        calibrated = np.maximum(calibrated, pool.coverage)  # NaN (no cosine) stays NaN here
    return np.where(np.isnan(calibrated), pool.coverage, calibrated)


def _materialise(tenant: Tenant, pool: _Pool, results: list[tuple[int, float, float]]) -> list[RetrievedChunk]:
    """The chunks of ``results`` (pool row, fused score, relevance), in that order."""
    if not results:
        return []
    with connection.cursor() as cursor:  # one statement: the ORM's query building cost as much as the query
        cursor.execute(
            f"""
            SELECT c.id, c.content, c.page, c.section, c.position, d.id, d.title
            FROM {Chunk._meta.db_table} c JOIN {Document._meta.db_table} d ON d.id = c.document_id AND d.tenant_id = c.tenant_id
            WHERE c.tenant_id = %s AND c.id = ANY(%s)
            """,  # noqa: S608 (our tables)
            [tenant.pk, [int(pool.ids[row]) for row, _, _ in results]],
        )
        rows = {row[0]: row for row in cursor.fetchall()}
    out: list[RetrievedChunk] = []
    for row_index, fused, relevance in results:
        row = rows.get(int(pool.ids[row_index]))
        if row is None:  # deleted between ranking and loading
            continue
        chunk_id, content, page, section, position, document_id, title = row
        cosine = float(pool.cosine[row_index])
        out.append(
            RetrievedChunk(
                chunk_id=chunk_id,
                document_id=document_id,
                document_title=title,
                content=content,
                page=page,
                section=section,
                position=position,
                score=round(relevance, 4),
                scores={
                    "keyword": round(float(pool.bm25[row_index]), 4),
                    "vector": 0.0 if np.isnan(cosine) else round(cosine, 4),
                    "fused": round(fused, 4),
                },
            )
        )
    return out
