"""The keyword leg: BM25 computed inside PostgreSQL from postings we maintain.

PostgreSQL's text search parser and the tenant's language configuration (stemming, stop words)
turn each chunk into lexemes; ``knowledge_chunkterm`` keeps one row per (chunk, lexeme) with its
term frequency, the chunk's length and an impact (BM25's tf component), ``knowledge_termstats``
the tenant's document frequency per lexeme and ``knowledge_lexicalstats`` its chunk count and total
length, all written in the indexing transaction. A query is tokenised by the same configuration
and scored with Okapi BM25 (Lucene's idf); unlike ``ts_rank`` over an AND query, any matching term
contributes. Each term's postings are read best impact first up to a budget, so a query's cost
does not grow with the tenant (docs/knowledge.md, "Keyword leg at scale").
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

    Each posting gets its impact (BM25's tf component with the tenant's average chunk length
    including this document): the order in which the keyword leg reads a term's postings.

    Call inside the transaction that stored the chunks. Returns (chunks, total lexemes).
    """
    params = {
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
        cursor.execute(
            """
            INSERT INTO knowledge_lexicalstats (tenant_id, chunk_count, total_length) VALUES (%(tenant)s, 0, 0)
            ON CONFLICT (tenant_id) DO NOTHING
            """,
            params,
        )
        cursor.execute("SELECT 1 FROM knowledge_lexicalstats WHERE tenant_id = %(tenant)s FOR UPDATE", params)
        # One pass: postings (with impacts) and document frequencies come from the lexemes computed
        # here. No join between sets whose size the planner cannot estimate (lexemes of unnest()):
        # with stale statistics a nested loop over them was quadratic.
        cursor.execute(
            """
            WITH lex AS (
                SELECT c.id AS chunk_id, t.lexeme, cardinality(t.positions) AS tf,
                       sum(cardinality(t.positions)) OVER (PARTITION BY c.id) AS len
                FROM knowledge_chunk c
                JOIN knowledge_document d ON d.id = c.document_id AND d.tenant_id = c.tenant_id
                CROSS JOIN LATERAL unnest(
                    to_tsvector(%(cfg)s::regconfig, c.content)
                    || to_tsvector(%(cfg)s::regconfig, repeat(d.title || ' ' || c.section || ' ', %(title_weight)s))
                ) t
                WHERE c.tenant_id = %(tenant)s AND c.document_id = %(doc)s AND length(t.lexeme) <= %(maxlen)s
            ), avg AS (
                SELECT greatest((s.total_length + (SELECT coalesce(sum(tf), 0) FROM lex))::float8
                                / greatest(s.chunk_count + (SELECT count(DISTINCT chunk_id) FROM lex), 1), 1) AS avgdl
                FROM knowledge_lexicalstats s WHERE s.tenant_id = %(tenant)s
            ), ins AS (
                INSERT INTO knowledge_chunkterm (tenant_id, chunk_id, term, tf, doc_len, impact)
                SELECT %(tenant)s, lex.chunk_id, lex.lexeme, lex.tf, lex.len,
                       lex.tf * (%(k1)s::float8 + 1)
                       / (lex.tf + %(k1)s::float8 * (1 - %(b)s::float8 + %(b)s::float8 * lex.len / avg.avgdl))
                FROM lex CROSS JOIN avg
                RETURNING term
            )
            INSERT INTO knowledge_termstats (tenant_id, term, df)
            SELECT %(tenant)s, term, count(*) FROM ins GROUP BY term ORDER BY term
            ON CONFLICT (tenant_id, term) DO UPDATE SET df = knowledge_termstats.df + EXCLUDED.df
            """,
            params,
        )
        # Each chunk's length from its own postings (primary-key range): a plan that cannot go wrong.
        cursor.execute(
            """
            UPDATE knowledge_chunk c SET lexical_length = coalesce(
                (SELECT sum(p.tf) FROM knowledge_chunkterm p WHERE p.tenant_id = c.tenant_id AND p.chunk_id = c.id), 0)
            WHERE c.tenant_id = %(tenant)s AND c.document_id = %(doc)s
            """,
            params,
        )
        cursor.execute(
            """
            UPDATE knowledge_lexicalstats s SET
                chunk_count = s.chunk_count + d.n, total_length = s.total_length + d.len
            FROM (SELECT count(*) AS n, coalesce(sum(lexical_length), 0) AS len FROM knowledge_chunk
                  WHERE tenant_id = %(tenant)s AND document_id = %(doc)s) d
            WHERE s.tenant_id = %(tenant)s
            RETURNING d.n, d.len
            """,
            params,
        )
        row = cursor.fetchone()
    return int(row[0]), int(row[1])


def remove_postings(*, tenant_id: Any, document_id: Any) -> None:
    """Delete a document's postings and subtract them from the statistics (same transaction)."""
    params = {"tenant": tenant_id, "doc": document_id}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE knowledge_lexicalstats s SET
                chunk_count = greatest(s.chunk_count - d.n, 0), total_length = greatest(s.total_length - d.len, 0)
            FROM (SELECT count(*) AS n, coalesce(sum(lexical_length), 0) AS len FROM knowledge_chunk
                  WHERE tenant_id = %(tenant)s AND document_id = %(doc)s) d
            WHERE s.tenant_id = %(tenant)s
            """,
            params,
        )
        # The postings by primary key (tenant, chunk = ANY(the document's chunks)), counted per term.
        cursor.execute(
            """
            WITH gone AS (
                DELETE FROM knowledge_chunkterm p
                WHERE p.tenant_id = %(tenant)s AND p.chunk_id = ANY(ARRAY(
                    SELECT id FROM knowledge_chunk WHERE tenant_id = %(tenant)s AND document_id = %(doc)s))
                RETURNING p.term
            )
            SELECT coalesce(array_agg(term ORDER BY term), '{}'), coalesce(array_agg(n ORDER BY term), '{}')
            FROM (SELECT term, count(*)::int AS n FROM gone GROUP BY term) counts
            """,
            params,
        )
        terms, counts = cursor.fetchone()
        if not terms:
            return
        # Arrays bound as values: the planner knows their length and probes (tenant, term) per term.
        cursor.execute(
            """
            WITH updated AS (
                UPDATE knowledge_termstats t SET df = greatest(t.df - d.n, 0)
                FROM unnest(%(terms)s::text[], %(counts)s::int[]) AS d(term, n)
                WHERE t.tenant_id = %(tenant)s AND t.term = d.term
                RETURNING t.term, t.df
            )
            SELECT coalesce(array_agg(term) FILTER (WHERE df <= 0), '{}') FROM updated
            """,
            {**params, "terms": terms, "counts": counts},
        )
        emptied = cursor.fetchone()[0]
        if emptied:
            cursor.execute(
                "DELETE FROM knowledge_termstats WHERE tenant_id = %s AND term = ANY(%s) AND df <= 0",
                [tenant_id, emptied],
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
    -- float8 throughout: a bare parameter like 0.9 would be numeric, ten times slower per posting.
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1) AS avgdl,
           %(k1)s::float8 AS k1, %(b)s::float8 AS b
    FROM knowledge_lexicalstats WHERE tenant_id = %(tenant)s
), qs AS MATERIALIZED (
    -- A term absent from the tenant has df 0: it scores nothing but keeps its (high) idf in the
    -- query's idf mass, so coverage stays "share of the whole query".
    SELECT q.term, q.qtf, coalesce(t.df, 0) AS df, ln(1 + (s.n - coalesce(t.df, 0) + 0.5) / (coalesce(t.df, 0) + 0.5)) AS idf
    FROM q CROSS JOIN s
    LEFT JOIN knowledge_termstats t ON t.tenant_id = %(tenant)s AND t.term = q.term
), kept AS MATERIALIZED (
    -- A term found in nearly every chunk has an idf near zero: it cannot change the ranking, but
    -- its posting list is the longest to read. Skip it unless it is all the query has.
    SELECT term, qtf, idf, df FROM qs WHERE df > 0 AND idf >= %(prune)s::float8 * (SELECT max(idf) FROM qs)
), cut AS MATERIALIZED (
    SELECT coalesce(bool_or(df > %(per_term)s), false) AS truncated FROM kept
), partial AS MATERIALIZED (
    -- Each kept term's best postings by impact (all of them when it has at most per_term), summed
    -- per chunk: the exact BM25 of every matching chunk unless a term's list was cut.
    SELECT p.chunk_id,
           sum(kept.qtf * kept.idf * p.tf * (s.k1 + 1) / (p.tf + s.k1 * (1 - s.b + s.b * p.doc_len / s.avgdl)))
               AS score,
           sum(kept.qtf * kept.idf) AS mass
    FROM kept CROSS JOIN s
    CROSS JOIN LATERAL (
        SELECT p.chunk_id, p.tf, p.doc_len FROM knowledge_chunkterm p
        WHERE p.tenant_id = %(tenant)s AND p.term = kept.term
        ORDER BY p.impact DESC LIMIT %(per_term)s
    ) p
    GROUP BY p.chunk_id
), pool AS (
    (SELECT chunk_id FROM partial ORDER BY score DESC, chunk_id LIMIT %(pool)s)
    UNION
    SELECT unnest(%(ids)s::bigint[])
), terms AS MATERIALIZED (
    SELECT array_agg(term) AS list, array_agg(qtf * idf) AS weight FROM kept
)
-- No list was cut: the partial scores are exact.
SELECT partial.chunk_id, partial.score, partial.mass / (SELECT sum(qtf * idf) FROM qs)
FROM partial JOIN pool USING (chunk_id)
WHERE NOT (SELECT truncated FROM cut)
UNION ALL
-- A list was cut: the pool's exact BM25 from each chunk's own postings of the kept terms (one
-- primary-key probe (tenant, chunk, term) per chunk, never a scan of a term's list).
SELECT pool.chunk_id,
       sum(p.weight * p.tf * (s.k1 + 1) / (p.tf + s.k1 * (1 - s.b + s.b * p.doc_len / s.avgdl))),
       sum(p.weight) / (SELECT sum(qtf * idf) FROM qs)
FROM pool CROSS JOIN s
CROSS JOIN LATERAL (
    SELECT terms.weight[array_position(terms.list, p.term::text)] AS weight, p.tf, p.doc_len
    FROM terms JOIN knowledge_chunkterm p
        ON p.tenant_id = %(tenant)s AND p.chunk_id = pool.chunk_id AND p.term = ANY(terms.list)
    OFFSET 0  -- keeps the probe per chunk: flattened, the planner may scan the terms' lists instead
) p
WHERE (SELECT truncated FROM cut)
GROUP BY pool.chunk_id
"""


def keyword_query(
    *,
    tenant_id: Any,
    query: str,
    config: str,
    limit: int,
    include_ids: list[int] | None = None,
    exhaustive: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters ``keyword_search`` runs (the benchmarks EXPLAIN the same statement)."""
    budget = int(settings.KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM)
    return _BM25_SQL, {
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
    tenant_id: Any,
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
