"""The keyword leg: BM25 computed inside PostgreSQL from postings we maintain.

PostgreSQL's text search parser and the tenant's language configuration (stemming, stop words)
turn each chunk into lexemes; ``knowledge_chunkterm`` keeps one row per (chunk, lexeme) with its
term frequency and the chunk's length, and ``knowledge_lexicalstats`` the tenant's chunk count and
total length, all written in the indexing transaction. A query is tokenised by the same
configuration and scored with Okapi BM25 (Lucene's idf), reading only a covering index of
(tenant, term). Unlike ``ts_rank`` over an AND query, any matching term contributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection

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


def store_postings(*, tenant_id: Any, document_id: Any, config: str) -> tuple[int, int]:
    """Write the postings of a document's chunks and add them to the tenant's statistics.

    Field weighting (BM25F-style, by term frequency): the document title and the chunk's section
    heading path count ``KNOWLEDGE_TITLE_WEIGHT`` times on top of the chunk text, so a chunk under a
    matching title or heading ranks above one that mentions the words in passing.

    Call inside the transaction that stored the chunks. Returns (chunks, total lexemes).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH lex AS (
                SELECT c.id AS chunk_id, t.lexeme, cardinality(t.positions) AS tf
                FROM knowledge_chunk c
                JOIN knowledge_document d ON d.id = c.document_id AND d.tenant_id = c.tenant_id
                CROSS JOIN LATERAL unnest(
                    to_tsvector(%(cfg)s::regconfig, c.content)
                    || to_tsvector(%(cfg)s::regconfig, repeat(d.title || ' ' || c.section || ' ', %(title_weight)s))
                ) t
                WHERE c.tenant_id = %(tenant)s AND c.document_id = %(doc)s AND length(t.lexeme) <= %(maxlen)s
            ), lens AS (
                SELECT chunk_id, sum(tf)::int AS len FROM lex GROUP BY chunk_id
            ), upd AS (
                UPDATE knowledge_chunk c SET lexical_length = lens.len FROM lens
                WHERE c.id = lens.chunk_id AND c.tenant_id = %(tenant)s RETURNING c.id
            )
            INSERT INTO knowledge_chunkterm (tenant_id, chunk_id, term, tf, doc_len)
            SELECT %(tenant)s, lex.chunk_id, lex.lexeme, lex.tf, lens.len FROM lex JOIN lens USING (chunk_id)
            """,
            {
                "cfg": config,
                "tenant": tenant_id,
                "doc": document_id,
                "maxlen": MAX_TERM_LENGTH,
                "title_weight": int(settings.KNOWLEDGE_TITLE_WEIGHT),
            },
        )
        cursor.execute(
            """
            INSERT INTO knowledge_lexicalstats (tenant_id, chunk_count, total_length)
            SELECT %(tenant)s, count(*), coalesce(sum(lexical_length), 0) FROM knowledge_chunk
            WHERE tenant_id = %(tenant)s AND document_id = %(doc)s
            ON CONFLICT (tenant_id) DO UPDATE SET
                chunk_count = knowledge_lexicalstats.chunk_count + EXCLUDED.chunk_count,
                total_length = knowledge_lexicalstats.total_length + EXCLUDED.total_length
            RETURNING (SELECT count(*) FROM knowledge_chunk WHERE tenant_id = %(tenant)s AND document_id = %(doc)s),
                      (SELECT coalesce(sum(lexical_length), 0) FROM knowledge_chunk
                       WHERE tenant_id = %(tenant)s AND document_id = %(doc)s)
            """,
            {"tenant": tenant_id, "doc": document_id},
        )
        row = cursor.fetchone()
    return int(row[0]), int(row[1])


def remove_postings(*, tenant_id: Any, document_id: Any) -> None:
    """Delete a document's postings and subtract them from the statistics (same transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE knowledge_lexicalstats s SET
                chunk_count = greatest(s.chunk_count - d.n, 0), total_length = greatest(s.total_length - d.len, 0)
            FROM (SELECT count(*) AS n, coalesce(sum(lexical_length), 0) AS len FROM knowledge_chunk
                  WHERE tenant_id = %(tenant)s AND document_id = %(doc)s) d
            WHERE s.tenant_id = %(tenant)s
            """,
            {"tenant": tenant_id, "doc": document_id},
        )
        cursor.execute(
            """
            DELETE FROM knowledge_chunkterm p USING knowledge_chunk c
            WHERE p.tenant_id = %(tenant)s AND c.tenant_id = %(tenant)s AND c.document_id = %(doc)s
              AND p.chunk_id = c.id
            """,
            {"tenant": tenant_id, "doc": document_id},
        )


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

_BM25_SQL = """
WITH q AS (
    SELECT lexeme AS term, cardinality(positions) AS qtf
    FROM unnest(to_tsvector(%(cfg)s::regconfig, %(query)s))
), s AS (
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1) AS avgdl
    FROM knowledge_lexicalstats WHERE tenant_id = %(tenant)s
), qs AS (
    SELECT q.term, q.qtf, ln(1 + (s.n - d.df + 0.5) / (d.df + 0.5)) AS idf
    FROM q CROSS JOIN s
    CROSS JOIN LATERAL (
        SELECT count(*) AS df FROM knowledge_chunkterm p WHERE p.tenant_id = %(tenant)s AND p.term = q.term
    ) d
), scored AS MATERIALIZED (
    SELECT p.chunk_id,
           sum(qs.qtf * qs.idf * p.tf * (%(k1)s + 1) / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.doc_len / s.avgdl)))
               AS score,
           sum(qs.qtf * qs.idf) / (SELECT sum(qtf * idf) FROM qs) AS coverage
    FROM qs JOIN knowledge_chunkterm p ON p.tenant_id = %(tenant)s AND p.term = qs.term CROSS JOIN s
    -- A term found in nearly every chunk has an idf near zero: it cannot change the ranking, but
    -- its posting list is the longest to read. Skip it unless it is all the query has.
    WHERE qs.idf >= %(prune)s * (SELECT max(idf) FROM qs)
    GROUP BY p.chunk_id
)
(SELECT chunk_id, score, coverage FROM scored ORDER BY score DESC, chunk_id LIMIT %(limit)s)
UNION
(SELECT chunk_id, score, coverage FROM scored WHERE chunk_id = ANY(%(ids)s))
"""


def keyword_search(
    *, tenant_id: Any, query: str, config: str, limit: int, include_ids: list[int] | None = None
) -> list[KeywordHit]:
    """BM25 top ``limit`` chunks of the tenant, plus the BM25 of ``include_ids`` (the other leg's
    candidates) when they match at all: one pass over the postings for both. Best first."""
    params = {
        "cfg": config,
        "query": query,
        "tenant": tenant_id,
        "k1": float(settings.KNOWLEDGE_BM25_K1),
        "b": float(settings.KNOWLEDGE_BM25_B),
        "limit": limit,
        "ids": include_ids or [],
        "prune": IDF_PRUNE_RATIO,
    }
    with connection.cursor() as cursor:
        cursor.execute(_BM25_SQL, params)
        hits = [KeywordHit(int(r[0]), float(r[1]), min(float(r[2] or 0), 1.0)) for r in cursor.fetchall()]
    return sorted(hits, key=lambda h: (-h.bm25, h.chunk_id))
