"""minSimilarity on e5 (issue 17): a chunk passes for what it is about, not because the question is vague.

The relevance of the vector leg is the margin over the query's own similarity to unrelated text
(knowledge.background), so a same-domain but unrelated short chunk ("Price match" for a shipping
question) no longer passes the default 0.7, and off-topic questions get nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from knowledge import background, retrieval
from knowledge.embedders import LocalE5Embedder
from tests.conversations.test_offline_answers import HANDBOOK_EN
from tests.knowledge.conftest import wait_for_status


@pytest.fixture
def handbook(live_worker: Any, upload: Any, tenant: Any) -> Any:
    assert wait_for_status(upload("handbook.md", HANDBOOK_EN).json()["id"]).status == "indexed"
    return tenant


def sections(results: list[retrieval.RetrievedChunk]) -> list[str]:
    return [r.section.rsplit(" > ", 1)[-1] for r in results]


@pytest.mark.parametrize(
    ("question", "section"),
    [
        ("How much is shipping to Spain?", "Shipping"),
        ("What are your opening hours?", "Opening hours"),
        ("Do you have a loyalty programme?", "Loyalty programme"),
    ],
)
def test_only_the_section_about_the_question_passes_the_default_cut(handbook: Any, question: str, section: str):
    results = retrieval.search(tenant=handbook, query=question, k=5)

    assert sections(results) == [section]
    assert "Price match" not in sections(
        retrieval.hybrid_search(tenant=handbook, query=question, k=5, min_relevance=0.7)
    )


@pytest.mark.parametrize(
    "question", ["Do you sell bicycles?", "Can I pay in bitcoin?", "hello", "What is the capital of Mongolia?"]
)
def test_off_topic_questions_get_nothing(handbook: Any, question: str):
    assert retrieval.search(tenant=handbook, query=question, k=5) == []


def test_the_query_background_level_follows_how_vague_the_question_is():
    embedder = LocalE5Embedder()
    vague = background.calibration_for(embedder, embedder.embed_query("How much does it cost?"))
    specific = background.calibration_for(embedder, embedder.embed_query("What is the capital of Mongolia?"))

    assert vague is not None and specific is not None
    assert vague[0] > specific[0]  # "unrelated" starts higher for the vague question
    assert np.isclose(vague[1] - vague[0], 0.09)
