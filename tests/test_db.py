"""config.db.compact_sql: the hybrid search's statement stays short enough for psycopg to cache its
parsing (every search re-parsed 5.5 KB of SQL before), and compacting changes nothing PostgreSQL sees
but comments and indentation."""

from __future__ import annotations

import pytest
from psycopg import _queries

from config.db import compact_sql
from knowledge import vectors
from knowledge.retrieval import _hybrid_sql


def test_comments_and_indentation_go_literals_and_placeholders_stay() -> None:
    statement = """
    SELECT d.title || ' - ' || c.section,  -- the heading shown
           %(tenant)s::uuid
        FROM t   -- a table
    """
    assert compact_sql(statement) == "SELECT d.title || ' - ' || c.section,\n%(tenant)s::uuid\nFROM t"


@pytest.mark.parametrize("dims", sorted(vectors.INDEXED_DIMENSIONS))
def test_the_hybrid_statement_is_short_enough_for_psycopgs_parse_cache(dims: int) -> None:
    statement = _hybrid_sql(dims)
    assert "--" not in statement
    assert len(statement.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
