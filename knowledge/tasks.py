"""Celery tasks of the knowledge area (queue "indexing"): load ids, call the indexing service."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError

from knowledge import indexing, vectors
from knowledge.embedders import EmbeddingError

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="knowledge.index_document",
    acks_late=True,
    max_retries=None,
    # Real in a prefork worker (make run, docker compose): the soft limit interrupts a run stuck in
    # one long call, the hard limit replaces a child that does not return at all. A threads pool
    # ignores both; the run's own deadline checks (parsers, embedding loop) apply in every pool.
    # queue_indexing_turn sends them with each message too (a message's limits win over these).
    soft_time_limit=settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS,
    time_limit=indexing.hard_time_limit_seconds(),
)
def index_document_task(self, document_id: str | None = None, force: bool = False) -> None:  # type: ignore[no-untyped-def]
    """One turn of the indexing queue: index the fairest pending document (indexing.claim_next).

    One task is queued per document that becomes pending (upload, re-index, retry); ``document_id``
    names that document for the logs only and ``force`` is accepted from tasks queued by earlier
    versions. Idempotent: a redelivered task finds its document claimed or indexed and takes the
    next pending one, if any; an indexed document is indexed again only when re-indexed.
    """
    try:
        indexing.fail_stalled()
        document = indexing.claim_next()
    except (OperationalError, InterfaceError) as exc:
        # The database is unavailable: this turn of the queue is kept for later.
        raise self.retry(exc=exc, countdown=min(15 * 2**self.request.retries, 600)) from None
    if document is None:
        return
    generation = document.index_generation
    started = time.monotonic()
    try:
        if indexing.run(document=document) is not None:
            # The tenant may have crossed the size that gives it an HNSW index of its own.
            ensure_vector_indexes_task.delay(str(document.tenant_id))
    except SoftTimeLimitExceeded:
        indexing.mark_failed(document_id=document.pk, reason=indexing.time_limit_reason(), generation=generation)
    except (EmbeddingError, OperationalError, InterfaceError) as exc:
        # Transient (embedding endpoint or database down, rate limited): the document waits in the
        # queue for a backoff, then a task queued for that moment claims it (or a fairer one).
        backoff = indexing.requeue_after_error(document_id=document.pk, generation=generation, error=str(exc))
        if backoff is not None:
            queue_indexing_turn(str(document.pk), countdown=backoff)
    except Exception as exc:
        if _stopped_by_soft_limit(exc, self.request, time.monotonic() - started):
            # The limit's signal landed in code that turned it into another error (a C extension, a pool).
            indexing.mark_failed(document_id=document.pk, reason=indexing.time_limit_reason(), generation=generation)
            return
        logger.exception("indexing crashed", extra={"document_id": str(document.pk), "queued_for": document_id})
        indexing.mark_failed(
            document_id=document.pk,
            reason=f"Indexing failed unexpectedly ({type(exc).__name__}).",
            generation=generation,
        )


def _stopped_by_soft_limit(exc: BaseException, request: Any, elapsed: float) -> bool:
    """Whether a run's error is its soft time limit in disguise: SoftTimeLimitExceeded behind it, or
    the run past the soft limit its message carried (``request.timelimit``: hard, soft)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SoftTimeLimitExceeded):
            return True
        seen = seen.__cause__ or seen.__context__
    soft: float | None = (getattr(request, "timelimit", None) or (None, None))[1]
    return soft is not None and soft > 0 and elapsed >= soft


def queue_indexing_turn(document_id: str, *, countdown: int | None = None) -> None:
    """One more turn of the indexing queue, for a document that became pending. Celery puts the
    sender's time limits in the message and the worker obeys those: they are read from the settings
    now, not from the task's defaults fixed when this module was imported."""
    index_document_task.apply_async(
        args=[document_id],
        countdown=countdown,
        soft_time_limit=settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS,
        time_limit=indexing.hard_time_limit_seconds(),
    )


@shared_task(name="knowledge.fail_stalled_indexing", acks_late=True)
def fail_stalled_indexing_task() -> int:
    """Beat: fail runs whose worker died while the queue is idle (every indexing task checks too)."""
    return indexing.fail_stalled()


@shared_task(name="knowledge.ensure_vector_indexes", acks_late=True, ignore_result=True)
def ensure_vector_indexes_task(tenant_id: str | None = None) -> dict[str, int]:
    """A large tenant's own HNSW index (knowledge.vectors.ensure_tenant_indexes): after a document of
    the tenant was indexed, and hourly for every tenant (which also drops deleted tenants' indexes)."""
    return vectors.ensure_tenant_indexes(tenant_id=tenant_id)
