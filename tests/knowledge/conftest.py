"""Fixtures of the knowledge tests. Fixed documents are files in tests/fixtures/documents/; these
helpers make documents whose size a test chooses."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from bench._pdf import write_pdf
from knowledge.models import Document
from tests.conftest import wait_until

DOCUMENTS = Path(__file__).resolve().parent.parent / "fixtures" / "documents"


@pytest.fixture(autouse=True)
def media_root(tmp_path: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def make_docx(paragraphs: list[tuple[str, str]]) -> bytes:
    """(style, text) pairs, e.g. ("Heading 1", "Returns"), ("Normal", "...")."""
    import docx

    document = docx.Document()
    for style, text in paragraphs:
        document.add_paragraph(text, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_pdf(pages: list[str]) -> bytes:
    """A real PDF with one text line per page."""
    return write_pdf([[text] for text in pages])


@pytest.fixture
def upload(tenant_api: Any, tenant: Any) -> Callable[..., Any]:
    """``upload(name, content_bytes, title="")`` through the API; returns the response."""

    def do(name: str, content: bytes, title: str = "", api: Any = None, target: Any = None) -> Any:
        client = api or tenant_api
        owner = target or tenant
        data = {"file": SimpleUploadedFile(name, content)}
        if title:
            data["title"] = title
        return client.post(f"/api/tenants/{owner.pk}/documents/", data, format="multipart")

    return do


def wait_for_status(document_id: Any, *statuses: str, timeout: float = 60.0) -> Document:
    wanted = set(statuses) or {Document.Status.INDEXED, Document.Status.FAILED}

    def done() -> Document | None:
        document = Document.objects.get(pk=document_id)
        return document if document.status in wanted else None

    return wait_until(done, timeout=timeout, interval=0.1)
