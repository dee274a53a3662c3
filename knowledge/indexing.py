"""The indexing run of one document: parse, chunk, store (keyword-searchable), embed progressively.

1. Claim the document (status ``processing``, a new ``index_generation``).
2. Parse and chunk the stored file; a file that cannot be read ends as ``failed`` with its reason.
3. In one transaction: replace the document's chunks, their BM25 postings and the tenant's lexical
   statistics. From this commit the document is keyword-searchable.
4. Embed the chunks in batches; each batch is committed with its vectors and the progress counter,
   so the vector leg uses what is ready. The next batch is embedded while the previous one is written.
5. Mark ``indexed`` and emit ``document.indexed``.
A run that finds a newer generation (a re-index started meanwhile) or a deleted document stops.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from config import metrics
from events.services import emit
from events.types import EventType
from knowledge.chunking import chunk_blocks
from knowledge.embedders import Embedder, get_embedder
from knowledge.lexical import remove_postings, store_postings, text_search_config
from knowledge.models import Chunk, Document
from knowledge.parsers import ParseError, parse
from knowledge.vectors import bump_version, write_vectors

logger = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer indexing run (or a delete) took over this document."""


def index_document(*, document_id: Any, force: bool = False) -> Document | None:
    """Index one document. Raises EmbeddingError (transient: the task retries); other failures are
    recorded on the document as ``failed`` with a readable reason."""
    with transaction.atomic():
        document = Document.objects.select_for_update().select_related("tenant").filter(pk=document_id).first()
        if document is None:
            return None
        if document.status == Document.Status.INDEXED and not force:
            return document  # a redelivered task: nothing to do
        document.index_generation += 1
        document.status = Document.Status.PROCESSING
        document.error = ""
        document.chunks_embedded = 0
        document.save(update_fields=["index_generation", "status", "error", "chunks_embedded", "updated_at"])
    generation = document.index_generation
    tenant = document.tenant
    embedder = get_embedder(tenant=tenant)
    try:
        with default_storage.open(document.storage_name, "rb") as handle:
            data = handle.read()
        parsed = parse(data, document.format)
        drafts = chunk_blocks(
            parsed.blocks,
            count_tokens=embedder.count_tokens,
            max_tokens=settings.KNOWLEDGE_CHUNK_TOKENS,
            overlap_tokens=settings.KNOWLEDGE_CHUNK_OVERLAP_TOKENS,
        )
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
            bump_version(tenant_id=tenant.pk)
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
        return document
    except Superseded:
        logger.info("indexing superseded", extra={"document_id": str(document_id), "generation": generation})
        return None


def _lock_generation(document_id: Any, generation: int) -> Document:
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if document is None or document.index_generation != generation:
        raise Superseded
    return document


def _embed_progressively(
    *, embedder: Embedder, tenant_id: Any, document_id: Any, generation: int, items: list[tuple[int, str]]
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


def mark_failed(*, document_id: Any, reason: str, generation: int | None = None) -> None:
    with transaction.atomic():
        document = Document.objects.select_for_update().select_related("tenant").filter(pk=document_id).first()
        if document is None or (generation is not None and document.index_generation != generation):
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
