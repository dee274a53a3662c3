"""Fixtures of the knowledge tests: real small documents of every format, made here."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.models import Document
from tests.conftest import wait_until


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
    """A real PDF (one text line per page) written by hand: PDF syntax is small enough."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_id = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 11 Tf 40 780 Td ({escaped}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


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
