"""Document operations: upload (store, dedupe, enqueue indexing), delete, re-index."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from events.services import emit
from events.types import EventType
from knowledge import queries
from knowledge.lexical import remove_postings
from knowledge.models import Document
from knowledge.parsers import EXTENSIONS, SNIFF_BYTES, ContentMismatch, content_format, detect_format

if TYPE_CHECKING:
    from django.core.files.uploadedfile import UploadedFile

    from tenants.models import Tenant

logger = logging.getLogger(__name__)


class DocumentError(ValueError):
    status_code = 400
    code = "invalid_document"


class DocumentTooLarge(DocumentError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedDocumentType(DocumentError):
    status_code = 415
    code = "unsupported_media_type"


EMPTY_FILE = "The file is empty."


def safe_filename(name: str) -> str:
    """The file's base name, reduced to safe characters: it can never leave the tenant's folder."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    cleaned = get_valid_filename(base) if base.strip(". ") else ""
    cleaned = cleaned.lstrip(".")
    if not cleaned:
        cleaned = "document"
    stem, ext = os.path.splitext(cleaned)
    return stem[:100] + ext[:10]


def document_upload(*, tenant: Tenant, file: UploadedFile | File, title: str = "") -> Document:
    """Store the file under ``{tenant_id}/documents/`` and enqueue its indexing after commit.

    The format is the one the content has (PDF and DOCX by their signatures), whatever the name
    says; binary content that is none of the formats is refused (415). The same content uploaded
    again by the tenant returns the existing document (``is_duplicate`` is set on it) without
    storing or indexing anything twice. An empty file is never a duplicate: it is stored as a
    ``failed`` document saying it is empty.
    """
    filename = safe_filename(getattr(file, "name", "") or "")
    fmt = detect_format(filename=filename, content_type=getattr(file, "content_type", "") or "")
    if fmt is None:
        raise UnsupportedDocumentType(
            f"Unsupported file type '{os.path.splitext(filename)[1] or filename}'. "
            f"Supported: {', '.join(sorted(EXTENSIONS))}."
        )
    size = file.size or 0
    limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
    if size > limit:
        raise DocumentTooLarge(f"The file is {size} bytes; the limit is {limit} bytes.")
    file.seek(0)
    try:
        fmt = content_format(file.read(SNIFF_BYTES), fmt)
    except ContentMismatch as exc:
        raise UnsupportedDocumentType(str(exc)) from None
    digest = hashlib.sha256()
    file.seek(0)
    for piece in file.chunks():
        digest.update(piece)
    sha256 = digest.hexdigest()
    existing = Document.objects.for_tenant(tenant).filter(sha256=sha256, size_bytes__gt=0).first() if size else None
    if existing is not None:
        existing.is_duplicate = True  # type: ignore[attr-defined]
        return existing
    if not os.path.splitext(filename)[1]:
        filename += next(ext for ext, f in EXTENSIONS.items() if f == fmt)
    document_id = uuid.uuid4()
    file.seek(0)
    stored = default_storage.save(f"{tenant.pk}/documents/{document_id}/{filename}", file)
    title = (title or "").strip()[:300] or os.path.splitext(filename)[0][:300]
    try:
        with transaction.atomic():
            document = Document.objects.create(
                id=document_id,
                tenant=tenant,
                title=title,
                filename=filename,
                format=fmt,
                size_bytes=size,
                sha256=sha256,
                storage_name=stored,
                **({"status": Document.Status.FAILED, "error": EMPTY_FILE} if not size else {}),
            )
            emit(
                tenant=tenant,
                type=EventType.DOCUMENT_UPLOADED,
                payload={
                    "document_id": str(document.pk),
                    "title": title,
                    "filename": filename,
                    "format": fmt,
                    "size_bytes": size,
                    "sha256": sha256,
                },
            )
            if size:
                _enqueue_indexing(document)
            else:
                emit(
                    tenant=tenant,
                    type=EventType.DOCUMENT_FAILED,
                    payload={"document_id": str(document.pk), "title": title, "reason": EMPTY_FILE},
                )
    except IntegrityError:
        # The same content arrived concurrently and won the unique constraint: answer with that one.
        default_storage.delete(stored)
        existing = Document.objects.for_tenant(tenant).filter(sha256=sha256).first()
        if existing is None:
            raise
        existing.is_duplicate = True  # type: ignore[attr-defined]
        return existing
    except BaseException:
        default_storage.delete(stored)
        raise
    document.is_duplicate = False  # type: ignore[attr-defined]
    return document


def _enqueue_indexing(document: Document) -> None:
    """One more turn of the indexing queue, after commit: the task claims the fairest pending document."""
    from knowledge.tasks import queue_indexing_turn

    document_id = str(document.pk)
    transaction.on_commit(lambda: queue_indexing_turn(document_id))


def document_reindex(*, document: Document) -> Document:
    """Index the document again (after a change of embedding model or chunking settings).

    It goes to the back of its tenant's queue; a run of it in progress stops at its next step (it
    finds the document pending again), so the new run starts from the current file and settings."""
    now = timezone.now()
    with transaction.atomic():
        Document.objects.filter(pk=document.pk).update(
            status=Document.Status.PENDING,
            error="",
            queued_at=now,
            index_attempts=0,
            updated_at=now,
        )
        document.refresh_from_db()
        _enqueue_indexing(document)
    return document


def document_delete(*, document: Document) -> None:
    """Delete the document, its chunks and postings now, and its stored file after commit."""
    storage_name = document.storage_name
    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(pk=document.pk, tenant_id=document.tenant_id).first()
        if locked is None:
            return
        remove_postings(tenant_id=document.tenant_id, document_id=document.pk)
        with connection.cursor() as cursor:
            cursor.execute(queries.CHUNKS_DELETE_DOCUMENT, [document.tenant_id, document.pk])
        emit(
            tenant=document.tenant_id,
            type=EventType.DOCUMENT_DELETED,
            payload={"document_id": str(document.pk), "title": document.title, "filename": document.filename},
        )
        locked.delete()
        transaction.on_commit(lambda: _delete_file(storage_name), robust=True)


def _delete_file(name: str) -> None:
    try:
        default_storage.delete(name)
    except OSError:
        logger.exception("could not delete a document's file", extra={"storage_name": name})
