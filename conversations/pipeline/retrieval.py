"""Stage 4: the tenant's running A/B test applied (conversations.experiments), then its relevant passages
(``enableRag``) retrieved; the seam to knowledge.

``knowledge.retrieval.search`` is the knowledge area's contract; its chunks become the LLM's
``ContextPassage`` list here. A retrieval failure costs the turn its context, never its answer.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from conversations import experiments
from conversations.llm.base import ContextPassage
from conversations.pipeline.turn import Turn
from knowledge.retrieval import search

if TYPE_CHECKING:
    from tenants.models import Tenant

logger = logging.getLogger(__name__)


def search_passages(*, tenant: Tenant, query: str, marker_start: int = 1, k: int | None = None) -> list[ContextPassage]:
    if not query.strip():
        return []
    chunks = search(tenant=tenant, query=query, k=k)
    return [
        ContextPassage(
            marker=marker_start + index,
            chunk_id=str(chunk.chunk_id),
            document_id=str(chunk.document_id),
            title=chunk.document_title or "document",
            content=chunk.content,
            page=chunk.page,
            section=chunk.section or "",
            score=float(chunk.score or 0.0),
        )
        for index, chunk in enumerate(chunks)
    ]


def run(turn: Turn) -> None:
    if not turn.answering:
        return
    experiments.apply(turn)  # the tenant's running A/B test: this contact's variant of the settings, from here on
    if not turn.config.enable_rag:
        return
    started = time.monotonic()
    try:
        turn.passages = search_passages(tenant=turn.tenant, query=turn.query, k=turn.config.rag_config.top_k)
    except Exception:
        # Retrieval trouble must not cost the user an answer; it is logged with the turn's correlation id.
        logger.exception("retrieval failed; answering without context", extra={"tenant_id": str(turn.tenant.pk)})
        turn.passages = []
    turn.time("retrieval_ms", started)
