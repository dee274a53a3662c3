"""Celery tasks of the knowledge area (queue "indexing"): load ids, call the indexing service."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from knowledge import indexing
from knowledge.embedders import EmbeddingError

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="knowledge.index_document", acks_late=True, max_retries=4)
def index_document_task(self, document_id: str, force: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Idempotent: an indexed document is left alone unless ``force`` (a re-index)."""
    try:
        indexing.index_document(document_id=document_id, force=force)
    except (EmbeddingError, OperationalError, InterfaceError) as exc:
        # Transient (embedding endpoint or database down, rate limited): retry with backoff, then
        # record the failure. The indexing run starts over: it is idempotent.
        if self.request.retries >= self.max_retries:
            indexing.mark_failed(document_id=document_id, reason=f"Indexing failed after retries: {exc}")
            return
        raise self.retry(exc=exc, countdown=min(15 * 2**self.request.retries, 600)) from None
    except Exception as exc:
        logger.exception("indexing crashed", extra={"document_id": document_id})
        indexing.mark_failed(document_id=document_id, reason=f"Indexing failed unexpectedly ({type(exc).__name__}).")
