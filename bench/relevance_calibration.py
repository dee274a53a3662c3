"""How well an embedder's relevance separates relevant from unrelated chunks, raw and per query.

Relevant pairs: answerable SQuAD questions (``../shared/data/squad2``, a third of them) with their own
paragraph, and the demo handbook's on-topic questions (tests/conversations/test_offline_answers.py)
with their section. Unrelated pairs: the same SQuAD questions with the other article's paragraphs, and
ten off-topic questions with every chunk of both. Printed for the raw cosine and for the margin over
the query's background level (knowledge.background): AUC, the best single threshold, percentiles, and
the handbook's lowest relevant / highest unrelated score. docs/knowledge.md ("minSimilarity") has the
figures behind knowledge.background.MARGINS.

    python -m bench.relevance_calibration
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "squad2" / "dev-2-articles.json"
ON_TOPIC = [
    ("What are your opening hours?", 0), ("How much is shipping to Spain?", 1), ("Can I return a device?", 2),
    ("Do you have a loyalty programme?", 4), ("Do you match prices?", 3), ("When are refunds paid?", 2),
    ("Is the shop open on Saturday?", 0), ("How many points do I earn per euro?", 4),
]  # fmt: skip
OFF_TOPIC = [
    "What is the capital of Mongolia?", "Do you sell bicycles?", "Can I pay in bitcoin?", "hello",
    "Who won the world cup in 2010?", "How do I reset my password?", "Do you repair cars?",
    "What is the weather tomorrow?", "Tell me a joke", "Do you have vegan food?",
]  # fmt: skip


def handbook_sections() -> list[str]:
    """The demo handbook's sections, read from the test that uses it (no Django needed)."""
    source = (ROOT / "tests" / "conversations" / "test_offline_answers.py").read_text()
    match = re.search(r'HANDBOOK_EN = b"""(.*?)"""', source, re.S)
    assert match, "HANDBOOK_EN not found"
    return match.group(1).split("## ")[1:]


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    best = (0.0, 0.0)
    for t in np.unique(np.concatenate([pos, neg])):
        balanced = ((pos >= t).mean() + (neg < t).mean()) / 2
        if balanced > best[0]:
            best = (float(balanced), float(t))
    return best


def main() -> int:
    from knowledge import background
    from knowledge.embedders import LocalE5Embedder

    embedder = LocalE5Embedder()
    data = json.loads(DATA.read_text())["data"]
    paragraphs = [(a, p) for a, article in enumerate(data) for p in article["paragraphs"]]
    chunks = embedder.embed_passages([p["context"] for _, p in paragraphs])
    sections = handbook_sections()
    handbook = embedder.embed_passages(sections)
    bg = embedder.embed_passages(background.TEXTS)

    def level(vector: np.ndarray) -> float:
        return float(np.sort(bg @ vector)[::-1][: background.TOP].mean())

    raw: dict[str, list[float]] = {"pos": [], "neg": [], "hpos": [], "hneg": []}
    margin: dict[str, list[float]] = {"pos": [], "neg": [], "hpos": [], "hneg": []}
    answerable = [(i, qa) for i, (_, p) in enumerate(paragraphs) for qa in p["qas"] if not qa.get("is_impossible")]
    for n, (i, qa) in enumerate(answerable):
        if n % 3:
            continue
        vector = embedder.embed_query(qa["question"])
        cosines, lv = chunks @ vector, level(vector)
        raw["pos"].append(cosines[i])
        margin["pos"].append(cosines[i] - lv)
        for j, (article, _) in enumerate(paragraphs):
            if article != paragraphs[i][0]:
                raw["neg"].append(cosines[j])
                margin["neg"].append(cosines[j] - lv)
    for question, section in ON_TOPIC:
        vector = embedder.embed_query(question)
        cosine, lv = float(handbook[section] @ vector), level(vector)
        for scores, value in ((raw, cosine), (margin, cosine - lv)):
            scores["pos"].append(value)
            scores["hpos"].append(value)
    for question in OFF_TOPIC:
        vector = embedder.embed_query(question)
        lv = level(vector)
        for cosine in list(handbook @ vector):
            for scores, value in ((raw, cosine), (margin, cosine - lv)):
                scores["neg"].append(value)
                scores["hneg"].append(value)
        for cosine in list(chunks @ vector):
            raw["neg"].append(cosine)
            margin["neg"].append(cosine - lv)
    for name, scores in (("raw cosine", raw), ("margin over background", margin)):
        pos, neg = np.array(scores["pos"]), np.array(scores["neg"])
        auc = float((pos[:, None] > neg[None, :]).mean())
        balanced, threshold = best_threshold(pos, neg)
        print(
            f"{name:24s} AUC {auc:.3f}  best balanced accuracy {balanced:.3f} at {threshold:.3f}  "
            f"relevant p10/p50 {np.percentile(pos, 10):.3f}/{np.percentile(pos, 50):.3f}  unrelated "
            f"p50/p95/p99 {np.percentile(neg, 50):.3f}/{np.percentile(neg, 95):.3f}/{np.percentile(neg, 99):.3f}  "
            f"handbook lowest relevant {min(scores['hpos']):.3f} highest unrelated {max(scores['hneg']):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
