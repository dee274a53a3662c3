"""The knowledge app's raw SQL, in one place (the vector leg's, which is its own subsystem, stays in
knowledge.vectors).

These statements are raw because the ORM cannot say them (CTEs that insert and return, LATERAL
reads of a term's best postings, tenants ranked by a correlated subquery on a partial index) or says
them at a cost measured on the indexing path. Table names come from the models' ``_meta.db_table``,
so a renamed table or a moved model changes one place. The callers bind every value as a parameter.
"""

from __future__ import annotations

from knowledge.models import Chunk, ChunkTerm, Document, LexicalStats, TermStats

CHUNK = Chunk._meta.db_table
CHUNK_TERM = ChunkTerm._meta.db_table
DOCUMENT = Document._meta.db_table
LEXICAL_STATS = LexicalStats._meta.db_table
TERM_STATS = TermStats._meta.db_table

# The tenant's statistics row, created empty if missing: it is the lock of the keyword index.
LEXICAL_STATS_ENSURE = f"""
INSERT INTO {LEXICAL_STATS} (tenant_id, chunk_count, total_length) VALUES (%(tenant)s, 0, 0)
ON CONFLICT (tenant_id) DO NOTHING
"""

LEXICAL_STATS_LOCK = f"""
SELECT 1 FROM {LEXICAL_STATS} WHERE tenant_id = %(tenant)s FOR UPDATE
"""

# A document's postings with their impacts, and its terms' document frequencies, in one pass.
POSTINGS_INSERT = f"""
WITH lex AS (
    SELECT c.id AS chunk_id, t.lexeme, cardinality(t.positions) AS tf,
           sum(cardinality(t.positions)) OVER (PARTITION BY c.id) AS len
    FROM {CHUNK} c
    JOIN {DOCUMENT} d ON d.id = c.document_id AND d.tenant_id = c.tenant_id
    CROSS JOIN LATERAL unnest(
        to_tsvector(%(cfg)s::regconfig, c.content)
        || to_tsvector(%(cfg)s::regconfig, repeat(d.title || ' ' || c.section || ' ', %(title_weight)s))
    ) t
    WHERE c.tenant_id = %(tenant)s AND c.document_id = %(doc)s AND length(t.lexeme) <= %(maxlen)s
), avg AS (
    SELECT greatest((s.total_length + (SELECT coalesce(sum(tf), 0) FROM lex))::float8
                    / greatest(s.chunk_count + (SELECT count(DISTINCT chunk_id) FROM lex), 1), 1) AS avgdl
    FROM {LEXICAL_STATS} s WHERE s.tenant_id = %(tenant)s
), ins AS (
    INSERT INTO {CHUNK_TERM} (tenant_id, chunk_id, term, tf, doc_len, impact)
    SELECT %(tenant)s, lex.chunk_id, lex.lexeme, lex.tf, lex.len,
           lex.tf * (%(k1)s::float8 + 1)
           / (lex.tf + %(k1)s::float8 * (1 - %(b)s::float8 + %(b)s::float8 * lex.len / avg.avgdl))
    FROM lex CROSS JOIN avg
    RETURNING term
)
INSERT INTO {TERM_STATS} (tenant_id, term, df)
SELECT %(tenant)s, term, count(*) FROM ins GROUP BY term ORDER BY term
ON CONFLICT (tenant_id, term) DO UPDATE SET df = {TERM_STATS}.df + EXCLUDED.df
"""

# Each chunk's length from its own postings (primary-key range).
CHUNK_LEXICAL_LENGTH_SET = f"""
UPDATE {CHUNK} c SET lexical_length = coalesce(
    (SELECT sum(p.tf) FROM {CHUNK_TERM} p WHERE p.tenant_id = c.tenant_id AND p.chunk_id = c.id), 0)
WHERE c.tenant_id = %(tenant)s AND c.document_id = %(doc)s
"""

LEXICAL_STATS_ADD_DOCUMENT = f"""
UPDATE {LEXICAL_STATS} s SET
    chunk_count = s.chunk_count + d.n, total_length = s.total_length + d.len
FROM (SELECT count(*) AS n, coalesce(sum(lexical_length), 0) AS len FROM {CHUNK}
      WHERE tenant_id = %(tenant)s AND document_id = %(doc)s) d
WHERE s.tenant_id = %(tenant)s
RETURNING d.n, d.len
"""

LEXICAL_STATS_SUBTRACT_DOCUMENT = f"""
UPDATE {LEXICAL_STATS} s SET
    chunk_count = greatest(s.chunk_count - d.n, 0), total_length = greatest(s.total_length - d.len, 0)
FROM (SELECT count(*) AS n, coalesce(sum(lexical_length), 0) AS len FROM {CHUNK}
      WHERE tenant_id = %(tenant)s AND document_id = %(doc)s) d
WHERE s.tenant_id = %(tenant)s
"""

# A document's postings deleted by primary key, counted per term: (terms, counts).
POSTINGS_DELETE_DOCUMENT = f"""
WITH gone AS (
    DELETE FROM {CHUNK_TERM} p
    WHERE p.tenant_id = %(tenant)s AND p.chunk_id = ANY(ARRAY(
        SELECT id FROM {CHUNK} WHERE tenant_id = %(tenant)s AND document_id = %(doc)s))
    RETURNING p.term
)
SELECT coalesce(array_agg(term ORDER BY term), '{{}}'), coalesce(array_agg(n ORDER BY term), '{{}}')
FROM (SELECT term, count(*)::int AS n FROM gone GROUP BY term) counts
"""

# Arrays bound as values: the planner knows their length and probes (tenant, term) per term.
TERM_STATS_SUBTRACT = f"""
WITH updated AS (
    UPDATE {TERM_STATS} t SET df = greatest(t.df - d.n, 0)
    FROM unnest(%(terms)s::text[], %(counts)s::int[]) AS d(term, n)
    WHERE t.tenant_id = %(tenant)s AND t.term = d.term
    RETURNING t.term, t.df
)
SELECT coalesce(array_agg(term) FILTER (WHERE df <= 0), '{{}}') FROM updated
"""

TERM_STATS_DELETE_EMPTY = f"""
DELETE FROM {TERM_STATS} WHERE tenant_id = %s AND term = ANY(%s) AND df <= 0
"""

# The keyword leg's BM25 (knowledge.lexical.keyword_search; docs/knowledge.md, "Keyword leg at scale").
KEYWORD_BM25 = f"""
WITH q AS (
    SELECT lexeme AS term, cardinality(positions) AS qtf
    FROM unnest(to_tsvector(%(cfg)s::regconfig, %(query)s))
), s AS (
    -- float8 throughout: a bare parameter like 0.9 would be numeric, ten times slower per posting.
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1) AS avgdl,
           %(k1)s::float8 AS k1, %(b)s::float8 AS b
    FROM {LEXICAL_STATS} WHERE tenant_id = %(tenant)s
), qs AS MATERIALIZED (
    -- A term absent from the tenant has df 0: it scores nothing but keeps its (high) idf in the
    -- query's idf mass, so coverage stays "share of the whole query".
    SELECT q.term, q.qtf, coalesce(t.df, 0) AS df, ln(1 + (s.n - coalesce(t.df, 0) + 0.5) / (coalesce(t.df, 0) + 0.5)) AS idf
    FROM q CROSS JOIN s
    LEFT JOIN {TERM_STATS} t ON t.tenant_id = %(tenant)s AND t.term = q.term
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
        SELECT p.chunk_id, p.tf, p.doc_len FROM {CHUNK_TERM} p
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
    FROM terms JOIN {CHUNK_TERM} p
        ON p.tenant_id = %(tenant)s AND p.chunk_id = pool.chunk_id AND p.term = ANY(terms.list)
    OFFSET 0  -- keeps the probe per chunk: flattened, the planner may scan the terms' lists instead
) p
WHERE (SELECT truncated FROM cut)
GROUP BY pool.chunk_id
"""

# Tenants with documents ready to index, the least recently served first (a tenant never served
# before comes first), then by how long their oldest document waits. Reads the pending partial
# index (document_pending_queue) and one probe of (tenant_id, claimed_at) per tenant.
READY_TENANTS = f"""
SELECT ready.tenant_id
FROM (
    SELECT tenant_id, min(queued_at) AS first_queued
    FROM {DOCUMENT}
    WHERE status = 'pending' AND queued_at <= %s
    GROUP BY tenant_id
) AS ready
ORDER BY (
    SELECT max(served.claimed_at) FROM {DOCUMENT} AS served WHERE served.tenant_id = ready.tenant_id
) ASC NULLS FIRST, ready.first_queued
LIMIT 20
"""

CHUNKS_DELETE_DOCUMENT = f"""
DELETE FROM {CHUNK} WHERE tenant_id = %s AND document_id = %s
"""
