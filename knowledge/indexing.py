"""The indexing run of one document: parse, chunk, store (keyword-searchable), embed progressively.

0. Which document: an indexing task does not index the document it was queued for but claims the
   fairest pending one (``claim_next``): of the tenants with documents waiting, the one whose latest
   claim is oldest (never served first), and that tenant's document queued first. One task is queued
   per pending document, so the work is the same as first-come-first-served; only the order changes,
   and one tenant's bulk import no longer delays another tenant's single document.
1. Claim the document (status ``processing``, a new ``index_generation``, ``claimed_at``).
2. Parse and chunk the stored file under the parsing limits (knowledge.parsers.Limits); a file that
   cannot be read, or crosses a limit, ends as ``failed`` with its reason.
3. In one transaction: replace the document's chunks, their BM25 postings and the tenant's lexical
   statistics. From this commit the document is keyword-searchable.
4. Embed the chunks in batches; each batch is committed with its vectors and the progress counter,
   so the vector leg uses what is ready. The next batch is embedded while the previous one is written.
5. Mark ``indexed`` and emit ``document.indexed``.
A run that finds a newer generation (a re-index started meanwhile) or a deleted document stops.
A run that passes KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS (checked between embedding batches; in a
prefork worker Celery's soft limit also interrupts it) ends ``failed``; one whose worker died
(killed, out of memory, hard time limit) is failed by ``fail_stalled``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from config import metrics
from events.services import emit
from events.types import EventType
from knowledge import queries
from knowledge.chunking import chunk_blocks
from knowledge.embedders import Embedder, get_embedder
from knowledge.lexical import remove_postings, store_postings, text_search_config
from knowledge.models import Chunk, Document
from knowledge.parsers import Limits, ParseError, parse
from knowledge.vectors import write_vectors

logger = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer indexing run (or a delete) took over this document."""


class TimeLimitReached(Exception):
    """The run passed KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS."""


def hard_time_limit_seconds() -> int:
    """Celery's hard limit of an indexing task: the soft limit and two minutes for the run to record
    its failure; past it a prefork child is killed."""
    return settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS + 120


def time_limit_reason() -> str:
    return (
        f"Indexing took longer than {settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS} s (the limit) and was stopped; "
        "split the document into smaller files."
    )


def claim_next(*, now: datetime | None = None) -> Document | None:
    """Claim the fairest pending document (see the module's docstring), or None when none is ready.

    Rows another worker is claiming at the same moment are skipped (``SKIP LOCKED``), so concurrent
    tasks never wait on each other or claim one document twice.
    """
    now = now or timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(queries.READY_TENANTS, [now])
            tenant_ids = [row[0] for row in cursor.fetchall()]
        for tenant_id in tenant_ids:
            # of=self: the joined tenant row must not be locked too, or a second claimer would skip
            # every document of that tenant while the first one holds its claim.
            document = (
                Document.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("tenant")
                .filter(tenant_id=tenant_id, status=Document.Status.PENDING, queued_at__lte=now)
                .order_by("queued_at", "created_at")
                .first()
            )
            if document is not None:
                _start_run(document, now=now)
                return document
    return None


def index_document(*, document_id: UUID | str, force: bool = False) -> Document | None:
    """Index this one document now, whatever the queue holds (tests, benchmarks, commands).

    Raises EmbeddingError (transient); other failures are recorded on the document as ``failed``."""
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(of=("self",)).select_related("tenant").filter(pk=document_id).first()
        )
        if document is None:
            return None
        if document.status == Document.Status.INDEXED and not force:
            return document  # a redelivered task: nothing to do
        _start_run(document, now=timezone.now())
    return run(document=document)


def _start_run(document: Document, *, now: datetime) -> None:
    document.index_generation += 1
    document.status = Document.Status.PROCESSING
    document.error = ""
    document.chunks_embedded = 0
    document.claimed_at = now
    document.index_attempts += 1
    document.save(
        update_fields=[
            "index_generation",
            "status",
            "error",
            "chunks_embedded",
            "claimed_at",
            "index_attempts",
            "updated_at",
        ]
    )


def run(*, document: Document) -> Document | None:
    """The indexing run of a claimed document (status ``processing``, this run's generation).

    Raises EmbeddingError and database errors (transient: see ``requeue_after_error``); other failures
    are recorded on the document as ``failed`` with a readable reason."""
    started = time.monotonic()
    generation = document.index_generation
    tenant = document.tenant
    embedder = get_embedder(tenant=tenant)
    limits = Limits.from_settings(started=started)
    try:
        with default_storage.open(document.storage_name, "rb") as handle:
            data = handle.read()
        parsed = parse(data, document.format, limits=limits)
        drafts = chunk_blocks(
            parsed.blocks,
            count_tokens=embedder.count_tokens,
            max_tokens=settings.KNOWLEDGE_CHUNK_TOKENS,
            overlap_tokens=settings.KNOWLEDGE_CHUNK_OVERLAP_TOKENS,
        )
        limits.check_time()  # chunking (tokenising) counts against the parsing budget
        if not drafts:
            raise ParseError("No text could be extracted from the file.")
    except ParseError as exc:
        mark_failed(document_id=document.pk, reason=str(exc), generation=generation)
        return None
    except FileNotFoundError:
        mark_failed(
            document_id=document.pk, reason="The stored file is missing; upload it again.", generation=generation
        )
        return None

    try:
        with transaction.atomic():
            _lock_generation(document.pk, generation)
            remove_postings(tenant_id=tenant.pk, document_id=document.pk)
            Chunk.objects.filter(tenant_id=tenant.pk, document_id=document.pk).delete()
            chunks = Chunk.objects.bulk_create(
                [
                    Chunk(
                        tenant_id=tenant.pk,
                        document_id=document.pk,
                        position=d.position,
                        content=d.content,
                        page=d.page,
                        section=d.section,
                        token_count=d.token_count,
                    )
                    for d in drafts
                ]
            )
            store_postings(tenant_id=tenant.pk, document_id=document.pk, config=text_search_config(tenant=tenant))
            Document.objects.filter(pk=document.pk).update(
                chunks_total=len(chunks),
                chunks_embedded=0,
                tokens_total=sum(d.token_count for d in drafts),
                pages=parsed.pages,
                embedding_model=embedder.model_id,
                keyword_ready_at=timezone.now(),
                updated_at=timezone.now(),
            )
        _embed_progressively(
            embedder=embedder,
            tenant_id=tenant.pk,
            document_id=document.pk,
            generation=generation,
            items=[(c.pk, d.embedding_text) for c, d in zip(chunks, drafts, strict=True)],
            deadline=started + settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS,
        )
        with transaction.atomic():
            document = _lock_generation(document.pk, generation)
            document.status = Document.Status.INDEXED
            document.indexed_at = timezone.now()
            document.save(update_fields=["status", "indexed_at", "updated_at"])
            emit(
                tenant=tenant,
                type=EventType.DOCUMENT_INDEXED,
                payload={
                    "document_id": str(document.pk),
                    "title": document.title,
                    "chunks": document.chunks_total,
                    "tokens": document.tokens_total,
                    "embedding_model": embedder.model_id,
                },
            )
        metrics.incr("documents_indexed_total", outcome="indexed")
        metrics.observe("document_indexing_duration_seconds", time.monotonic() - started)
        return document
    except TimeLimitReached:
        mark_failed(document_id=document.pk, reason=time_limit_reason(), generation=generation)
        return None
    except Superseded:
        logger.info("indexing superseded", extra={"document_id": str(document.pk), "generation": generation})
        return None


def _lock_generation(document_id: UUID | str, generation: int) -> Document:
    """The document locked, if this run still owns it: same generation, still ``processing`` (a
    re-index made it pending again, a delete removed it, a newer run took it over)."""
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if document is None or document.index_generation != generation or document.status != Document.Status.PROCESSING:
        raise Superseded
    return document


def _embed_progressively(
    *,
    embedder: Embedder,
    tenant_id: UUID,
    document_id: UUID,
    generation: int,
    items: list[tuple[int, str]],
    deadline: float,
) -> None:
    size = max(1, settings.KNOWLEDGE_EMBED_BATCH)
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    if not batches:
        return
    # The embedder (C code or HTTP) releases the GIL: embed batch i+1 while batch i is written.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed") as pool:
        pending = pool.submit(embedder.embed_passages, [t for _, t in batches[0]])
        for index, batch in enumerate(batches):
            vectors = pending.result()
            if time.monotonic() > deadline:
                raise TimeLimitReached
            if index + 1 < len(batches):
                pending = pool.submit(embedder.embed_passages, [t for _, t in batches[index + 1]])
            with transaction.atomic():
                _lock_generation(document_id, generation)
                write_vectors(
                    tenant_id=tenant_id, ids=[i for i, _ in batch], vectors=vectors, model_id=embedder.model_id
                )
                Document.objects.filter(pk=document_id).update(
                    chunks_embedded=min(len(items), (index * size) + len(batch)), updated_at=timezone.now()
                )


def mark_failed(*, document_id: UUID | str, reason: str, generation: int | None = None) -> None:
    """Record the failure; with ``generation``, only if that run still owns the document."""
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(of=("self",)).select_related("tenant").filter(pk=document_id).first()
        )
        if document is None:
            return
        if generation is not None and (
            document.index_generation != generation or document.status != Document.Status.PROCESSING
        ):
            return
        document.status = Document.Status.FAILED
        document.error = reason[:2000]
        document.save(update_fields=["status", "error", "updated_at"])
        emit(
            tenant=document.tenant,
            type=EventType.DOCUMENT_FAILED,
            payload={"document_id": str(document.pk), "title": document.title, "reason": document.error},
        )
    metrics.incr("documents_indexed_total", outcome="failed")
    logger.warning("document indexing failed", extra={"document_id": str(document_id), "reason": reason})


def requeue_after_error(*, document_id: UUID | str, generation: int, error: str) -> int | None:
    """A transient failure (embedder or database unavailable): the document waits in the queue again
    for a backoff (15 s doubling, at most 10 min), or ends ``failed`` after KNOWLEDGE_INDEX_MAX_ATTEMPTS.

    Returns the backoff in seconds when requeued: the caller queues one task for then (the one that
    failed was this document's)."""
    with transaction.atomic():
        try:
            document = _lock_generation(document_id, generation)
        except Superseded:
            return None
        if document.index_attempts >= settings.KNOWLEDGE_INDEX_MAX_ATTEMPTS:
            mark_failed(
                document_id=document_id,
                reason=f"Indexing failed after {document.index_attempts} attempts: {error}",
                generation=generation,
            )
            return None
        backoff = min(15 * 2 ** max(0, document.index_attempts - 1), 600)
        document.status = Document.Status.PENDING
        document.queued_at = timezone.now() + timedelta(seconds=backoff)
        document.error = f"Retrying in {backoff} s: {error}"[:2000]
        document.save(update_fields=["status", "queued_at", "error", "updated_at"])
    logger.warning("indexing will be retried", extra={"document_id": str(document_id), "backoff": backoff})
    return backoff


def stall_timeout() -> timedelta:
    """How long after its claim a run still ``processing`` is known to be dead: past the hard limit,
    which kills a prefork child, with a minute to spare."""
    return timedelta(seconds=hard_time_limit_seconds() + 60)


def fail_stalled(*, now: datetime | None = None) -> int:
    """Fail the runs whose worker died (killed, out of memory, hard time limit): they would stay
    ``processing`` forever. The generation moves on, so a run that was only stuck stops when it wakes."""
    cutoff = (now or timezone.now()) - stall_timeout()
    failed = 0
    stalled = Document.objects.filter(status=Document.Status.PROCESSING, claimed_at__lt=cutoff)
    for document_id in stalled.values_list("pk", flat=True)[:100]:
        with transaction.atomic():
            document = (
                Document.objects.select_for_update(skip_locked=True)
                .filter(pk=document_id, status=Document.Status.PROCESSING, claimed_at__lt=cutoff)
                .first()
            )
            if document is None:
                continue
            document.index_generation += 1
            document.save(update_fields=["index_generation", "updated_at"])
            mark_failed(
                document_id=document_id,
                reason=(
                    "Indexing stopped without finishing (the worker was stopped, ran out of memory or passed the "
                    f"hard time limit of {hard_time_limit_seconds()} s). "
                    "Re-index the document to try again, or split it into smaller files."
                ),
            )
            failed += 1
    return failed
