"""A cursor that sends its parameters apart from the statement, for the few statements where that
costs less than Django's default (client-side binding: every parameter quoted into the SQL text).

Django's cursors bind on the client: a 384-d query vector becomes ~3 KB of text, quoted in Python and
parsed again by PostgreSQL wherever the statement names it (the hybrid search names it three times).
``server_bound_cursor`` sends it once as a parameter, and can ask for results in binary form (a
``vector_send`` column arrives as its bytes instead of hex text, ~2x fewer bytes to read and decode).

The statement is never prepared (the connections' ``prepare_threshold`` is None, in the settings): an
unnamed statement is planned with its parameters' values, as a client-bound one is, so a tenant id
still matches that tenant's partial HNSW index (knowledge.vectors); a prepared statement's generic plan
was slower in bench.turn's hybrid search (8.3 against 6.9 ms).
The cursor is wrapped as Django wraps its own: execute wrappers (the statement timer of config.metrics)
and ``CaptureQueriesContext`` see it like any other statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection
from django.db.backends.utils import CursorWrapper
from psycopg.pq import Format


@contextmanager
def server_bound_cursor(*, binary: bool = False) -> Iterator[CursorWrapper]:
    """A Django cursor on the default connection whose parameters travel apart from the SQL
    (``%(name)s`` placeholders become ``$n``; a name used twice is sent once). ``binary``: results in
    PostgreSQL's binary form (bytea as bytes; every column needs a binary loader, which the built-in
    types have)."""
    connection.ensure_connection()
    cursor: Any = psycopg.Cursor(connection.connection)
    if binary:
        cursor.format = Format.BINARY
    # Wrapped as Django wraps its own cursors (BaseDatabaseWrapper._prepare_cursor).
    connection.validate_thread_sharing()
    wrapped = connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)
    with wrapped:
        yield wrapped


_COMMENT = re.compile(r"--[^\n]*")


def compact_sql(statement: str) -> str:
    """The statement without its ``--`` comments and indentation (for statements whose string literals
    hold neither ``--`` nor line breaks). psycopg caches its parsing of a statement's placeholders
    only up to 4,096 characters: the hybrid search's 5.5 KB text was parsed again on every search
    (100 µs of CPU; 7 µs from the cache once compacted to 4.0 KB)."""
    lines = (line.strip() for line in _COMMENT.sub("", statement).splitlines())
    return "\n".join(line for line in lines if line)
