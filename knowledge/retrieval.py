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
class _Candidate:
    chunk_id: int
    bm25: float = 0.0
    coverage: float = 0.0
    cosine: float | None = None
    vector: np.ndarray | None = None  # for the feedback step, when both legs ran


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
        pool = [
            _Candidate(i, cosine=c)
            for i, c in vectors.nearest(tenant_id=tenant.pk, model_id=model_id, vector=vector, limit=vector_depth)
        ]
    elif keyword_weight > 0 or vector_weight > 0:  # vectors unavailable: the keyword leg alone
        config = text_search_config(tenant=tenant)
        pool = [
            _Candidate(h.chunk_id, h.bm25, h.coverage)
            for h in keyword_search(tenant_id=tenant.pk, query=query, config=config, limit=depth)
        ]
    else:
        pool = []
    if not pool:
        return []

    ranked = _fuse(pool, keyword_weight, vector_weight, fusion, vector)
    prf_docs, prf_weight = settings.KNOWLEDGE_PRF_DOCS, settings.KNOWLEDGE_PRF_WEIGHT
    if keyword_weight > 0 and vector is not None and 0 < prf_docs < len(ranked) and prf_weight > 0:
        ranked = _feedback_rerank(ranked, vector, keyword_weight, vector_weight, fusion)
    low, high = calibration
    vector_on = vector_weight > 0 and vector is not None
    scored = [(c, fused, _relevance(c, keyword_weight > 0, vector_on, low, high)) for c, fused in ranked]
    best = next((fused for _, fused, relevance in scored if relevance >= min_relevance), None)
    if best is None:
        return []
    # Reciprocal rank fusion's scores carry ranks, not how close a chunk is: its cut stays the plain one.
    near = best * settings.KNOWLEDGE_NEAR_BEST if fusion != "rrf" else float("inf")
    results = [(c, fused, relevance) for c, fused, relevance in scored if relevance >= min_relevance or fused >= near]
    return _materialise(tenant, results[:k])


def _both_legs(
    tenant: Tenant, query: str, vector: np.ndarray, model_id: str, depth: int, vector_depth: int
) -> list[_Candidate]:
    """Both legs' candidates with both scores (and their vectors) from one statement."""
    _, params = keyword_query(tenant_id=tenant.pk, query=query, config=text_search_config(tenant=tenant), limit=depth)
    params.update(vectors.vector_leg_params(tenant_id=tenant.pk, model_id=model_id, vector=vector, limit=vector_depth))
    params["feedback"] = settings.KNOWLEDGE_PRF_DOCS > 0 and settings.KNOWLEDGE_PRF_WEIGHT > 0
    with connection.cursor() as cursor:
        cursor.execute(_hybrid_sql(len(vector)), params)
        rows = cursor.fetchall()
    pool: list[_Candidate] = []
    keyword_only: list[_Candidate] = []
    for chunk_id, from_vector, bm25, coverage, cosine, blob in rows:
        candidate = _Candidate(
            int(chunk_id),
            float(bm25 or 0.0),
            min(float(coverage or 0.0), 1.0),
            None if cosine is None else float(cosine),
            None if blob is None else vectors.from_binary(blob),
        )
        (pool if from_vector else keyword_only).append(candidate)
    # The keyword leg's own top ``depth`` (its statement rescored up to twice as many).
    keyword_only.sort(key=lambda c: (-c.bm25, c.chunk_id))
    return pool + keyword_only[:depth]


@cache
def _hybrid_sql(dims: int) -> str:
    """The vector leg's CTEs, then the keyword leg's statement with the vector candidates as the ids
    it scores besides its own top, then every candidate's cosine (and vector, for the feedback)."""
    keyword = queries.KEYWORD_BM25.replace("SELECT unnest(%(ids)s::bigint[])", "SELECT id FROM vec")
    assert keyword != queries.KEYWORD_BM25, "the keyword statement no longer takes extra ids"
    return f"""
WITH {vectors.vector_leg_sql(dims)}, kw (chunk_id, score, coverage) AS ({keyword}
), candidates AS (
    SELECT id FROM vec UNION SELECT chunk_id FROM kw
)
SELECT c.id, c.id IN (SELECT id FROM vec), kw.score, kw.coverage, sim.cosine,
       CASE WHEN %(feedback)s AND sim.cosine IS NOT NULL THEN vector_send(c.embedding) END
FROM candidates JOIN {Chunk._meta.db_table} c ON c.tenant_id = %(tenant)s AND c.id = candidates.id
LEFT JOIN kw ON kw.chunk_id = c.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN c.embedding_model = %(model)s AND vector_dims(c.embedding) = {dims}
                THEN 1 - (c.embedding <=> %(qvec)s::vector) END AS cosine
) sim
"""  # noqa: S608 (our tables; dims is an int)


def _feedback_rerank(
    ranked: list[tuple[_Candidate, float]],
    vector: np.ndarray,
    keyword_weight: float,
    vector_weight: float,
    fusion: str,
) -> list[tuple[_Candidate, float]]:
    """Pseudo-relevance feedback on the vector leg (Rocchio): move the query vector towards the
    mean of the top fused results and rank the candidates again with it. The candidates' reported
    cosine (and so their calibrated relevance) stays the one of the original query."""
    top = [c.vector for c, _ in ranked[: settings.KNOWLEDGE_PRF_DOCS] if c.vector is not None]
    if not top:
        return ranked
    moved = vector + settings.KNOWLEDGE_PRF_WEIGHT * np.mean(top, axis=0)
    moved = moved / (np.linalg.norm(moved) or 1.0)
    pool = [c for c, _ in ranked]
    shadow = [
        _Candidate(c.chunk_id, c.bm25, c.coverage, float(c.vector @ moved) if c.vector is not None else c.cosine)
        for c in pool
    ]
    by_id = {c.chunk_id: c for c in pool}
    return [(by_id[s.chunk_id], f) for s, f in _fuse(shadow, keyword_weight, vector_weight, fusion, moved)]


def _fuse(
    pool: list[_Candidate], keyword_weight: float, vector_weight: float, fusion: str, vector: np.ndarray | None
) -> list[tuple[_Candidate, float]]:
    if vector is None:
        vector_weight = 0.0
    if keyword_weight == 0 and vector_weight == 0:
        keyword_weight = 1.0  # vectors not available (not embedded yet / embedder down): keyword only
    max_bm25 = max((c.bm25 for c in pool), default=0.0) or 1.0
    sims = [c.cosine for c in pool if c.cosine is not None]
    low, high = (min(sims), max(sims)) if sims else (0.0, 1.0)
    span = (high - low) or 1.0
    fused: dict[int, float] = {}
    if fusion == "rrf":
        by_kw = sorted(pool, key=lambda c: -c.bm25)
        by_vec = sorted(pool, key=lambda c: -(c.cosine if c.cosine is not None else -2))
        for rank, c in enumerate(by_kw):
            fused[c.chunk_id] = keyword_weight / (RRF_K + rank + 1) if c.bm25 > 0 else 0.0
        for rank, c in enumerate(by_vec):
            if c.cosine is not None:
                fused[c.chunk_id] += vector_weight / (RRF_K + rank + 1)
    else:
        for c in pool:
            kw = c.bm25 / max_bm25
            vec = (c.cosine - low) / span if c.cosine is not None else 0.0
            fused[c.chunk_id] = (keyword_weight * kw + vector_weight * vec) / (keyword_weight + vector_weight)
    return sorted(((c, fused[c.chunk_id]) for c in pool), key=lambda x: (-x[1], x[0].chunk_id))


def _relevance(candidate: _Candidate, keyword_on: bool, vector_on: bool, low: float, high: float) -> float:
    """Query-independent relevance in 0..1: the embedder-calibrated cosine, or the keyword coverage
    (share of the query's idf mass in the chunk) when that is higher: an exact match of rare terms
    (a product code, a name) the embedding misses still counts as relevant."""
    parts: list[float] = []
    if keyword_on:
        parts.append(candidate.coverage)
    if vector_on and candidate.cosine is not None:
        parts.append(min(max((candidate.cosine - low) / ((high - low) or 1.0), 0.0), 1.0))
    return max(parts) if parts else candidate.coverage


def _materialise(tenant: Tenant, results: list[tuple[_Candidate, float, float]]) -> list[RetrievedChunk]:
    if not results:
        return []
    with connection.cursor() as cursor:  # one statement: the ORM's query building cost as much as the query
        cursor.execute(
            f"""
            SELECT c.id, c.content, c.page, c.section, c.position, d.id, d.title
            FROM {Chunk._meta.db_table} c JOIN {Document._meta.db_table} d ON d.id = c.document_id AND d.tenant_id = c.tenant_id
            WHERE c.tenant_id = %s AND c.id = ANY(%s)
            """,  # noqa: S608 (our tables)
            [tenant.pk, [r[0].chunk_id for r in results]],
        )
        rows = {row[0]: row for row in cursor.fetchall()}
    out: list[RetrievedChunk] = []
    for candidate, fused, relevance in results:
        row = rows.get(candidate.chunk_id)
        if row is None:  # deleted between ranking and loading
            continue
        chunk_id, content, page, section, position, document_id, title = row
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
                    "keyword": round(candidate.bm25, 4),
                    "vector": round(candidate.cosine, 4) if candidate.cosine is not None else 0.0,
                    "fused": round(fused, 4),
                },
            )
        )
    return out
