"""The keyword leg: BM25 computed inside PostgreSQL from postings we maintain.

PostgreSQL's text search parser and the tenant's language configuration (stemming, stop words)
turn each chunk into lexemes; ``ChunkTerm`` keeps one row per (chunk, lexeme) with its
term frequency, the chunk's length and an impact (BM25's tf component), ``TermStats``
the tenant's document frequency per lexeme and ``LexicalStats`` its chunk count and total
length, all written in the indexing transaction. A query is tokenised by the same configuration
and scored with Okapi BM25 (Lucene's idf); unlike ``ts_rank`` over an AND query, any matching term
contributes. Each term's postings are read best impact first up to a budget, so a query's cost
does not grow with the tenant (docs/knowledge.md, "Keyword leg at scale").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.conf import settings
from django.db import connection

from knowledge import queries

if TYPE_CHECKING:
    from tenants.models import Tenant

# First locale of the tenant -> PostgreSQL text search configuration (Snowball stemmer + stop words).
LANGUAGE_CONFIGS = {
    "ar": "arabic",
    "ca": "catalan",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "eu": "basque",
    "fi": "finnish",
    "fr": "french",
    "ga": "irish",
    "hi": "hindi",
    "hu": "hungarian",
    "hy": "armenian",
    "id": "indonesian",
    "it": "italian",
    "lt": "lithuanian",
    "ne": "nepali",
    "nl": "dutch",
    "no": "norwegian",
    "nb": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
    "yi": "yiddish",
}
MAX_TERM_LENGTH = 200


def text_search_config(*, tenant: Tenant) -> str:
    """The tenant's text search configuration: its first locale's language, else 'simple'."""
    language = (tenant.config.locale or ["en"])[0].split("-")[0].lower()
    return LANGUAGE_CONFIGS.get(language, "simple")


def store_postings(*, tenant_id: UUID, document_id: UUID, config: str) -> tuple[int, int]:
    """Write the postings of a document's chunks and add them to the tenant's statistics.

    Field weighting (BM25F-style, by term frequency): the document title and the chunk's section
    heading path count ``KNOWLEDGE_TITLE_WEIGHT`` times on top of the chunk text, so a chunk under a
    matching title or heading ranks above one that mentions the words in passing.

    Each posting gets its impact (BM25's tf component with the tenant's average chunk length
    including this document): the order in which the keyword leg reads a term's postings.

    Call inside the transaction that stored the chunks. Returns (chunks, total lexemes).
    """
    params: dict[str, Any] = {
        "cfg": config,
        "tenant": tenant_id,
        "doc": document_id,
        "maxlen": MAX_TERM_LENGTH,
        "title_weight": int(settings.KNOWLEDGE_TITLE_WEIGHT),
        "k1": float(settings.KNOWLEDGE_BM25_K1),
        "b": float(settings.KNOWLEDGE_BM25_B),
    }
    with connection.cursor() as cursor:
        # The statistics row is the tenant's lock for keyword index changes, taken first (as in
        # remove_postings): concurrent runs of one tenant queue instead of deadlocking on term rows.
        cursor.execute(queries.LEXICAL_STATS_ENSURE, params)
        cursor.execute(queries.LEXICAL_STATS_LOCK, params)
        # One pass: postings (with impacts) and document frequencies come from the lexemes computed
        # here. No join between sets whose size the planner cannot estimate (lexemes of unnest()):
        # with stale statistics a nested loop over them was quadratic.
        cursor.execute(queries.POSTINGS_INSERT, params)
        # Each chunk's length from its own postings (primary-key range): a plan that cannot go wrong.
        cursor.execute(queries.CHUNK_LEXICAL_LENGTH_SET, params)
        cursor.execute(queries.LEXICAL_STATS_ADD_DOCUMENT, params)
        row = cursor.fetchone()
    return int(row[0]), int(row[1])


def remove_postings(*, tenant_id: UUID, document_id: UUID) -> None:
    """Delete a document's postings and subtract them from the statistics (same transaction)."""
    params = {"tenant": tenant_id, "doc": document_id}
    with connection.cursor() as cursor:
        cursor.execute(queries.LEXICAL_STATS_SUBTRACT_DOCUMENT, params)
        # The postings by primary key (tenant, chunk = ANY(the document's chunks)), counted per term.
        cursor.execute(queries.POSTINGS_DELETE_DOCUMENT, params)
        terms, counts = cursor.fetchone()
        if not terms:
            return
        cursor.execute(queries.TERM_STATS_SUBTRACT, {**params, "terms": terms, "counts": counts})
        emptied = cursor.fetchone()[0]
        if emptied:
            cursor.execute(queries.TERM_STATS_DELETE_EMPTY, [tenant_id, emptied])


@dataclass(frozen=True)
class KeywordHit:
    chunk_id: int
    bm25: float
    # Share of the query's idf mass that this chunk matches (0..1): the keyword leg's relevance.
    coverage: float


def rebuild_postings(*, tenant: Tenant) -> int:
    """Rebuild the tenant's keyword index from its stored chunks (after a locale or weighting change)."""
    from django.db import transaction

    from knowledge.models import Document

    config = text_search_config(tenant=tenant)
    count = 0
    for document_id in Document.objects.for_tenant(tenant).values_list("id", flat=True).iterator():
        with transaction.atomic():
            remove_postings(tenant_id=tenant.pk, document_id=document_id)
            store_postings(tenant_id=tenant.pk, document_id=document_id, config=config)
        count += 1
    return count


# Query terms whose idf is below this share of the query's highest idf are not scored (see SQL).
IDF_PRUNE_RATIO = 0.05


def keyword_query(
    *,
    tenant_id: UUID,
    query: str,
    config: str,
    limit: int,
    include_ids: list[int] | None = None,
    exhaustive: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters ``keyword_search`` runs (the benchmarks EXPLAIN the same statement)."""
    budget = int(settings.KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM)
    return queries.KEYWORD_BM25, {
        "cfg": config,
        "query": query,
        "tenant": tenant_id,
        "k1": float(settings.KNOWLEDGE_BM25_K1),
        "b": float(settings.KNOWLEDGE_BM25_B),
        "ids": include_ids or [],
        "prune": IDF_PRUNE_RATIO,
        # At least ``limit`` postings per term: one matching term alone then fills the top ``limit``.
        "per_term": None if exhaustive else max(budget, limit),
        "pool": limit * int(settings.KNOWLEDGE_KEYWORD_RESCORE_FACTOR),
    }


def keyword_search(
    *,
    tenant_id: UUID,
    query: str,
    config: str,
    limit: int,
    include_ids: list[int] | None = None,
    exhaustive: bool = False,
) -> list[KeywordHit]:
    """BM25 top ``limit`` chunks of the tenant, plus the BM25 of ``include_ids`` (the other leg's
    candidates) when they match at all. Best first.

    Exact when no kept query term has more postings in the tenant than the budget
    (``KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM``, never under ``limit``) or with ``exhaustive=True``
    (every posting read: the benchmarks' reference). Otherwise the top ``limit`` is taken from the
    chunks with the best partial scores over each term's best postings, scored exactly: the cost of
    a query is bounded by the budget, not by the tenant's size (docs/knowledge.md measures its
    recall against the exhaustive ranking)."""
    sql, params = keyword_query(
        tenant_id=tenant_id, query=query, config=config, limit=limit, include_ids=include_ids, exhaustive=exhaustive
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        hits = [KeywordHit(int(r[0]), float(r[1]), min(float(r[2] or 0), 1.0)) for r in cursor.fetchall()]
    hits.sort(key=lambda h: (-h.bm25, h.chunk_id))
    wanted = set(include_ids or ())
    return [h for n, h in enumerate(hits) if n < limit or h.chunk_id in wanted]
