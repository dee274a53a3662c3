"""Retrieval quality on Cranfield: keyword leg, vector leg and hybrid, with a tenant's default config.

The 1,400 Cranfield abstracts are uploaded as one tenant's documents through the real path
(``knowledge.services.document_upload`` -> storage -> Celery worker on the "indexing" queue ->
parse, chunk, BM25 postings, e5 vectors), then the 225 queries run through
``knowledge.retrieval``. Reported: nDCG@10 (graded, gain 5 - grade), Recall@10 and MRR@10 for

- an independent BM25 computed here in Python (own tokenizer + Snowball stemmer, k1 0.9, b 0.4),
- the platform's keyword leg alone, the vector leg alone,
- hybrid exactly as ``knowledge.retrieval.search`` answers a tenant with default settings
  (weights 0.3/0.7, minSimilarity 0.7 on the calibrated relevance), and hybrid without the cut.

Embedding 1,400 abstracts with e5 on 2 busy cores takes minutes: with ``EMBEDDING_CACHE_DIR`` set
(default here: var/cache/embeddings) the embedder reuses vectors of identical text from earlier runs;
every other step of ingestion still runs. ``--no-cache`` embeds everything. The indexed tenant is
kept in the bench database and reused unless ``--reingest``.

    python -m bench.retrieval_quality [--reingest] [--no-cache] [--docs N] [--sweep]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TENANT_SLUG = "bench-cranfield"

OFF_TOPIC_QUERIES = [
    "how do I return a pair of shoes that do not fit",
    "what time does the pharmacy open on sunday",
    "best recipe for chocolate chip cookies",
    "can I change the delivery address of my order",
    "who won the football world cup in 2014",
    "how to reset my email password",
    "is there a vegetarian menu at the restaurant",
    "what is the price of a monthly gym membership",
    "how do I book a dentist appointment",
    "which documents do I need to open a bank account",
]


def cranfield_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("CRANFIELD_DIR") or (ROOT / ".." / "shared" / "data" / "cranfield")).resolve()


def load_cranfield(directory: Path) -> tuple[list[tuple[int, str, str]], list[str], dict[int, dict[int, int]]]:
    """(docs [(id, title, body)], queries by position, qrels {query position: {doc id: gain}})."""
    raw = (directory / "cran.all.1400").read_text()
    docs = []
    for part in re.split(r"^\.I ", raw, flags=re.M)[1:]:
        doc_id = int(part.split("\n", 1)[0])
        fields = dict(re.findall(r"^\.([TAWB])\n(.*?)(?=^\.[TAWB]\n|\Z)", part, flags=re.M | re.S))
        docs.append((doc_id, " ".join(fields.get("T", "").split()), fields.get("W", "")))
    queries = [
        " ".join(p.split(".W", 1)[1].split())
        for p in re.split(r"^\.I ", (directory / "cran.qry").read_text(), flags=re.M)[1:]
    ]
    qrels: dict[int, dict[int, int]] = {}
    for line in (directory / "cranqrel").read_text().split("\n"):
        parts = line.split()
        if len(parts) >= 3:
            query, doc, grade = int(parts[0]), int(parts[1]), int(parts[2])
            if 1 <= grade <= 4:  # -1: "no interest"
                qrels.setdefault(query, {})[doc] = 5 - grade
    return docs, queries, qrels


def metrics(ranking: list[int], gains: dict[int, int]) -> tuple[float, float, float]:
    top = ranking[:10]
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted(gains.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    relevant = {d for d, g in gains.items() if g > 0}
    recall = len(relevant & set(top)) / len(relevant) if relevant else 0.0
    mrr = next((1 / (i + 1) for i, d in enumerate(top) if d in relevant), 0.0)
    return (dcg / idcg if idcg else 0.0), recall, mrr


class IndependentBM25:
    """Okapi BM25 over whole documents, written from scratch (no PostgreSQL involved)."""

    STOP = set(
        [
            "i",
            "me",
            "my",
            "myself",
            "we",
            "our",
            "ours",
            "ourselves",
            "you",
            "your",
            "yours",
            "yourself",
            "yourselves",
            "he",
            "him",
            "his",
            "himself",
            "she",
            "her",
            "hers",
            "herself",
            "it",
            "its",
            "itself",
            "they",
            "them",
            "their",
            "theirs",
            "themselves",
            "what",
            "which",
            "who",
            "whom",
            "this",
            "that",
            "these",
            "those",
            "am",
            "is",
            "are",
            "was",
            "were",
            "be",
            "been",
            "being",
            "have",
            "has",
            "had",
            "having",
            "do",
            "does",
            "did",
            "doing",
            "a",
            "an",
            "the",
            "and",
            "but",
            "if",
            "or",
            "because",
            "as",
            "until",
            "while",
            "of",
            "at",
            "by",
            "for",
            "with",
            "about",
            "against",
            "between",
            "into",
            "through",
            "during",
            "before",
            "after",
            "above",
            "below",
            "to",
            "from",
            "up",
            "down",
            "in",
            "out",
            "on",
            "off",
            "over",
            "under",
            "again",
            "further",
            "then",
            "once",
            "here",
            "there",
            "when",
            "where",
            "why",
            "how",
            "all",
            "any",
            "both",
            "each",
            "few",
            "more",
            "most",
            "other",
            "some",
            "such",
            "no",
            "nor",
            "not",
            "only",
            "own",
            "same",
            "so",
            "than",
            "too",
            "very",
            "s",
            "t",
            "can",
            "will",
            "just",
            "don",
            "should",
            "now",
        ]
    )

    def __init__(self, docs: dict[int, str], k1: float = 0.9, b: float = 0.4):
        import snowballstemmer

        self.stemmer = snowballstemmer.stemmer("english")
        self.k1, self.b = k1, b
        self.tf = {d: Counter(self.tokens(text)) for d, text in docs.items()}
        self.length = {d: sum(c.values()) for d, c in self.tf.items()}
        self.avgdl = sum(self.length.values()) / len(self.length)
        self.df: Counter[str] = Counter()
        for counts in self.tf.values():
            self.df.update(counts.keys())
        self.n = len(docs)

    def tokens(self, text: str) -> list[str]:
        words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in self.STOP]
        return self.stemmer.stemWords(words)

    def rank(self, query: str) -> list[int]:
        scores: Counter[int] = Counter()
        for term, qtf in Counter(self.tokens(query)).items():
            df = self.df.get(term, 0)
            if not df:
                continue
            idf = math.log(1 + (self.n - df + 0.5) / (df + 0.5))
            for doc, counts in self.tf.items():
                tf = counts.get(term)
                if tf:
                    norm = tf + self.k1 * (1 - self.b + self.b * self.length[doc] / self.avgdl)
                    scores[doc] += qtf * idf * tf * (self.k1 + 1) / norm
        return [d for d, _ in sorted(scores.items(), key=lambda x: (-x[1], x[0]))]


def ingest(tenant, docs) -> dict:  # type: ignore[no-untyped-def]
    """Upload every document (identical content already uploaded is recognised, so a re-run resumes
    an interrupted ingestion) and wait until all are indexed or failed. The Celery worker runs in its
    own process and is restarted if it dies (the shared development database may restart)."""
    from django.core.files.base import ContentFile
    from django.db import OperationalError, close_old_connections, connection

    from bench._knowledge_setup import worker_process
    from knowledge.models import Document
    from knowledge.services import document_reindex, document_upload

    # Cranfield repeats some abstracts verbatim: identical content is one document (sha256 dedupe).
    expected = len({body.encode() for _, _, body in docs})
    started = time.monotonic()
    worker = worker_process(connection)
    counts: Counter[str] = Counter()
    uploaded = None
    last = -1
    try:
        while True:
            try:
                if uploaded is None:
                    for doc_id, title, body in docs:
                        document = document_upload(
                            tenant=tenant,
                            file=ContentFile(body.encode(), name=f"cran-{doc_id:04d}.txt"),
                            title=title or f"#{doc_id}",
                        )
                        if document.is_duplicate and document.status != Document.Status.INDEXED:
                            document_reindex(document=document)
                    uploaded = time.monotonic()
                counts = Counter(Document.objects.for_tenant(tenant).values_list("status", flat=True))
            except OperationalError as exc:  # the shared database restarted: carry on
                print(f"  database unavailable ({str(exc).strip()[:80]}); retrying", flush=True)
                time.sleep(5)
                close_old_connections()
                continue
            done = counts["indexed"] + counts["failed"]
            if done != last:
                rate = done / max(time.monotonic() - started, 1e-6)
                print(f"  indexed {done}/{expected} ({rate:.1f} docs/s) failed={counts['failed']}", flush=True)
                last = done
            if done >= expected:
                break
            if worker.poll() is not None:
                print("  worker exited; starting another", flush=True)
                worker = worker_process(connection)
            time.sleep(2)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {
        "seconds": time.monotonic() - started,
        "upload_seconds": (uploaded or time.monotonic()) - started,
        "failed": counts["failed"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--cranfield-dir", help="default: $CRANFIELD_DIR or ../shared/data/cranfield")
    parser.add_argument("--reingest", action="store_true", help="drop the bench tenant and ingest again")
    parser.add_argument("--no-cache", action="store_true", help="embed every chunk (no vector cache)")
    parser.add_argument("--docs", type=int, default=0, help="only the first N documents (quick validation)")
    parser.add_argument("--sweep", action="store_true", help="also print nDCG@10 over fusion weights")
    args = parser.parse_args(argv)

    directory = cranfield_dir(args.cranfield_dir)
    if not (directory / "cran.all.1400").exists():
        print(f"Cranfield not found in {directory} (set CRANFIELD_DIR)", file=sys.stderr)
        return 2
    if not args.no_cache:
        os.environ.setdefault("EMBEDDING_CACHE_DIR", str(ROOT / "var" / "cache" / "embeddings"))
    from bench._knowledge_setup import setup

    setup("bench_knowledge")
    import numpy as np

    from knowledge import retrieval
    from knowledge.embedders import get_embedder
    from knowledge.models import Chunk, Document
    from tenants import services as tenant_services
    from tenants.models import Tenant

    docs, queries, qrels = load_cranfield(directory)
    if args.docs:
        docs = docs[: args.docs]
    doc_ids = {d for d, _, _ in docs}
    slug = TENANT_SLUG + (f"-{args.docs}" if args.docs else "")
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is not None and args.reingest:
        tenant_services.tenant_delete(tenant=tenant)
        tenant = None
    if tenant is None:
        tenant = tenant_services.tenant_create(name="Cranfield bench", slug=slug)
    finished = Document.objects.for_tenant(tenant).filter(status__in=["indexed", "failed"]).count()
    if finished != len({body.encode() for _, _, body in docs}):
        print(f"ingesting {len(docs)} documents through the real upload + Celery indexing path ...", flush=True)
        report = ingest(tenant, docs)
        print(
            f"ingestion: {report['seconds']:.1f}s ({report['upload_seconds']:.1f}s uploading), failed={report['failed']}"
        )
    else:
        print(f"reusing the indexed bench tenant ({len(docs)} documents); --reingest to ingest again")
    chunks = Chunk.objects.for_tenant(tenant).count()
    print(f"tenant defaults: {tenant.config.rag_config.model_dump(by_alias=True)}; {chunks} chunks")

    cran_id = {pk: int(name[5:9]) for pk, name in Document.objects.for_tenant(tenant).values_list("id", "filename")}
    embedder = get_embedder(tenant=tenant)
    evaluated = [(pos, q) for pos, q in enumerate(queries, start=1) if pos in qrels and set(qrels[pos]) & doc_ids]
    started = time.monotonic()
    vectors = {pos: embedder.embed_query(q) for pos, q in evaluated}
    print(f"{len(evaluated)} queries embedded in {time.monotonic() - started:.1f}s")

    def doc_ranking(results: list) -> list[int]:
        seen: list[int] = []
        for r in results:
            d = cran_id[r.document_id]
            if d not in seen:
                seen.append(d)
        return seen

    def run(name: str, fn) -> tuple[float, float, float, int]:  # type: ignore[no-untyped-def]
        totals = np.zeros(3)
        empty = 0
        t0 = time.monotonic()
        for pos, q in evaluated:
            ranking = fn(pos, q)
            empty += not ranking
            totals += metrics(ranking, {d: g for d, g in qrels[pos].items() if d in doc_ids})
        n = len(evaluated)
        ndcg, recall, mrr = totals / n
        ms = (time.monotonic() - t0) * 1000 / n
        print(
            f"{name:<44} nDCG@10 {ndcg:.4f}  Recall@10 {recall:.4f}  MRR@10 {mrr:.4f}  empty {empty:>3}  {ms:6.1f} ms/q"
        )
        return ndcg, recall, mrr, empty

    def leg(pos: int, q: str, **kw) -> list[int]:  # type: ignore[no-untyped-def]
        return doc_ranking(
            retrieval.hybrid_search(tenant=tenant, query=q, k=30, query_vector=vectors[pos], embedder=embedder, **kw)
        )

    # Same fields as the platform's keyword leg: the text, plus the title KNOWLEDGE_TITLE_WEIGHT times.
    from django.conf import settings

    weight = settings.KNOWLEDGE_TITLE_WEIGHT
    bm25 = IndependentBM25({d: body + (" " + title) * weight for d, title, body in docs})
    plain = IndependentBM25({d: body for d, _, body in docs})
    rag = tenant.config.rag_config
    print()
    run("independent BM25, text only (no title field)", lambda pos, q: plain.rank(q))
    ref = run(f"independent BM25, text + title x{weight}", lambda pos, q: bm25.rank(q))
    kw = run("keyword leg (BM25 in PostgreSQL)", lambda pos, q: leg(pos, q, keyword_weight=1, vector_weight=0))
    run("vector leg (e5-small, exact cosine)", lambda pos, q: leg(pos, q, keyword_weight=0, vector_weight=1))
    run(
        "hybrid, default config, no relevance cut",
        lambda pos, q: leg(
            pos,
            q,
            keyword_weight=rag.hybrid_weights.keyword,
            vector_weight=rag.hybrid_weights.vector,
            fusion=rag.fusion,
        ),
    )
    hybrid = run(
        "hybrid = retrieval.search() as a tenant gets it",
        lambda pos, q: doc_ranking(retrieval.search(tenant=tenant, query=q, k=30)),
    )
    run(
        "hybrid, reciprocal rank fusion",
        lambda pos, q: leg(pos, q, keyword_weight=0.5, vector_weight=0.5, fusion="rrf"),
    )
    print(f"\nkeyword leg - independent BM25 nDCG@10: {kw[0] - ref[0]:+.4f} (target: within 0.01)")
    print(f"hybrid (default tenant) nDCG@10: {hybrid[0]:.4f} (target >= 0.40)")

    off_topic_empty = sum(not retrieval.search(tenant=tenant, query=q) for q in OFF_TOPIC_QUERIES)
    print(f"off-topic questions answered with nothing relevant: {off_topic_empty}/{len(OFF_TOPIC_QUERIES)}")

    # Calibration check of the relevance cut (see LocalE5Embedder.calibration): the best cosine for
    # on-topic and off-topic questions, and the cosine of judged-relevant chunks.
    from knowledge.vectors import cosines, nearest

    model = embedder.model_id
    chunk_ids_of: dict[int, list[int]] = {}
    for chunk_id, document_id in Chunk.objects.for_tenant(tenant).values_list("id", "document_id"):
        chunk_ids_of.setdefault(cran_id[document_id], []).append(chunk_id)
    on_top = [nearest(tenant_id=tenant.pk, model_id=model, vector=vectors[p], limit=1)[0][1] for p, _ in evaluated]
    off_top = [
        nearest(tenant_id=tenant.pk, model_id=model, vector=embedder.embed_query(q), limit=1)[0][1]
        for q in OFF_TOPIC_QUERIES
    ]
    relevant = [
        max(cosines(tenant_id=tenant.pk, model_id=model, vector=vectors[p], ids=chunk_ids_of[d]).values())
        for p, _ in evaluated
        for d, g in qrels[p].items()
        if g > 0 and d in chunk_ids_of
    ]
    pct = (5, 25, 50, 75, 95)
    for label, values in (
        ("best cosine, Cranfield queries", on_top),
        ("best cosine, off-topic", off_top),
        ("cosine of judged-relevant docs", relevant),
    ):
        print(f"{label:<32} p5/p25/p50/p75/p95: " + " ".join(f"{v:.3f}" for v in np.percentile(values, pct)))

    if args.sweep:
        for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            run(
                f"sweep: keyword {w:.1f} / vector {1 - w:.1f}",
                lambda pos, q, w=w: leg(pos, q, keyword_weight=w, vector_weight=1 - w),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
