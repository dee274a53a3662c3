"""``manage.py prewarm_knowledge``: after a reboot an operator reads the search's working set into
memory before traffic. It must read what a search reads (the chunks, both posting indexes, the term
statistics, every vector index including a tenant's own graph), nothing a search never reads, all of
each relation, and stay within a budget when given one."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from knowledge import vectors
from tests.knowledge.test_vector_index import clustered, store


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("prewarm_knowledge", *args, stdout=out)
    return out.getvalue()


def size_in_blocks(relation: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", [relation])
        return int(cursor.fetchone()[0])


def test_the_working_set_is_read_whole_and_nothing_else(settings: Any, tenant: Any, other_tenant: Any) -> None:
    settings.KNOWLEDGE_VECTOR_TENANT_INDEX_MIN = 300
    store(tenant, clustered(400, seed=1))
    store(other_tenant, clustered(40, seed=2))
    with connection.cursor() as cursor:  # (the test's transaction: checks deferred to commit block DDL)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert vectors.ensure_tenant_indexes(concurrently=False)["created"] == 1
    own = vectors.tenant_index_name(tenant.pk, 384)

    output = run()

    read = {m[1]: int(m[2]) for m in re.finditer(r"^(\S+): \d+ MB, (\d+) blocks in", output, re.M)}
    for relation in ("knowledge_chunk", "chunkterm_impact", "knowledge_chunkterm_pkey", "knowledge_termstats",
                     "chunk_embedded", "chunk_embedding_hnsw_384", own):  # fmt: skip
        if size_in_blocks(relation):
            assert read[relation] == size_in_blocks(relation), relation
    assert own in read and read[own] > 0  # the large tenant's own graph
    assert "knowledge_chunkterm" not in read  # the postings table: searches read its indexes only
    assert "chunk_unique_position" not in read  # used when writing only
    assert re.search(rf"read {len(read)} relations, \d+ MB, in [\d.]+ s \(read\)", output)


@pytest.mark.django_db
def test_a_budget_leaves_out_what_does_not_fit_and_says_so() -> None:
    output = run("--max-mb", "0", "--mode", "prefetch")
    *relations, total = output.strip().splitlines()
    assert relations and all(line.endswith(", left out (over --max-mb)") for line in relations)
    assert any(line.startswith("chunk_embedding_hnsw_384: ") for line in relations)
    assert total.startswith("read 0 relations, 0 MB")

    with pytest.raises(CommandError, match="--max-mb must be 0 or more"):
        run("--max-mb", "-1")


@pytest.mark.django_db
def test_the_embedded_server_reloads_its_cache_after_a_restart_and_reads_without_io_workers() -> None:
    """What the first searches after a restart depend on (docs/knowledge.md, the 1M corpus): autoprewarm
    brings the shared buffers back, and a buffer miss is read straight from the page cache rather than
    handed to an I/O worker process (config.embedded.TUNED_IO_METHOD)."""
    from config.embedded import TUNED_IO_METHOD, var_dir

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('data_directory')")
        if Path(cursor.fetchone()[0]).resolve() != (var_dir() / "pgdata").resolve():
            pytest.skip("DATABASE_URL names another server: its settings are its operator's")
        cursor.execute("SELECT current_setting('shared_preload_libraries'), current_setting('io_method')")
        preload, io_method = cursor.fetchone()
    assert "pg_prewarm" in preload
    assert io_method == TUNED_IO_METHOD == "sync"
