"""Reading the search's working set into memory after a cold start (a reboot, a failover, a new replica).

A search reads the chunks table (the candidates' vectors and texts), both posting indexes (index-only
scans: the postings table itself is never read), the term and tenant statistics, and a vector index (a
tenant's own HNSW graph or the shared one of its dimension). After a PostgreSQL restart, autoprewarm
(``pg_prewarm`` in ``shared_preload_libraries``) brings its shared buffers back and the OS page cache
still holds the rest. After a reboot the page cache is empty too: every page of that working set then
comes from disk on first use (an 8 kB read here: 38 µs from disk, 2.8 µs from the page cache), and at
1M chunks the first searches took p95 189 ms instead of 33 ms until traffic had touched their pages.

``prewarm`` reads those relations with ``pg_prewarm`` (mode ``read``: into the OS page cache, which
does not need shared buffers the size of the working set), smallest and most used first, within an
optional byte budget. ``manage.py prewarm_knowledge`` runs it; the scale bench measures with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import connection
from django.db.utils import DatabaseError

from knowledge import queries

MODES = ("read", "prefetch", "buffer")

# The relations a search reads, in the order they are read into memory: statistics (tiny, every
# search), the vector indexes and the chunks' own index, the chunks table, then the posting indexes
# (the largest). Not listed: the postings table and indexes used only when writing.
WORKING_SET_SQL = f"""
WITH rel (oid, rank) AS (
    SELECT '{queries.LEXICAL_STATS}'::regclass, 0
    UNION ALL SELECT '{queries.TERM_STATS}'::regclass, 0
    UNION ALL SELECT i.indexrelid, 0 FROM pg_index i
        WHERE i.indrelid IN ('{queries.LEXICAL_STATS}'::regclass, '{queries.TERM_STATS}'::regclass) AND i.indisprimary
    UNION ALL SELECT i.indexrelid, 1 FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = '{queries.CHUNK}'::regclass AND (am.amname = 'hnsw' OR i.indisprimary
              OR ic.relname = 'chunk_embedded')
    UNION ALL SELECT '{queries.CHUNK}'::regclass, 2
    UNION ALL SELECT i.indexrelid, 3 FROM pg_index i WHERE i.indrelid = '{queries.CHUNK_TERM}'::regclass
)
SELECT name, size FROM (SELECT oid::regclass::text AS name, rank, pg_relation_size(oid) AS size FROM rel) r
WHERE size > 0
ORDER BY rank, size, name
"""  # noqa: S608 (our tables' names)


class PrewarmUnavailable(Exception):
    """The server has no pg_prewarm extension, or this role may not create it."""


@dataclass(frozen=True)
class Read:
    relation: str
    bytes: int
    blocks: int
    seconds: float


def working_set() -> list[tuple[str, int]]:
    """The relations a search reads, with their sizes in bytes, in the order ``prewarm`` reads them."""
    with connection.cursor() as cursor:
        cursor.execute(WORKING_SET_SQL)
        return [(str(name), int(size)) for name, size in cursor.fetchall()]


def prewarm(*, mode: str = "read", max_bytes: int | None = None) -> tuple[list[Read], list[tuple[str, int]]]:
    """Read the search's working set into memory; returns what was read and what the budget left out."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    except DatabaseError as exc:
        raise PrewarmUnavailable(f"cannot use pg_prewarm on this server: {str(exc).strip().splitlines()[0]}") from None
    done: list[Read] = []
    skipped: list[tuple[str, int]] = []
    total = 0
    for name, size in working_set():
        if max_bytes is not None and total + size > max_bytes:
            skipped.append((name, size))
            continue
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_prewarm(%s::regclass, %s)", [name, mode])
            (blocks,) = cursor.fetchone()
        done.append(Read(name, size, int(blocks), time.monotonic() - started))
        total += size
    return done, skipped
