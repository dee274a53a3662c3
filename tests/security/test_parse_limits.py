"""Parse bombs and file types (issue #20, findings 6 and 13): uploads an attacker would send.

Each bomb is uploaded through the API to a real worker; it must end as a ``failed`` document whose
error says which limit it crossed (in the API and the admin), and the worker must index the next
document. File types are decided by the content, and an empty file is never another's duplicate.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from bench._docx import docx_with_body, paragraphs
from knowledge.models import Chunk, Document
from tests.knowledge.conftest import make_pdf, wait_for_status


@pytest.fixture(autouse=True)
def media_root(tmp_path: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def upload(tenant_api: Any, tenant: Any) -> Callable[[str, bytes], Any]:
    def do(name: str, content: bytes) -> Any:
        return tenant_api.post(
            f"/api/tenants/{tenant.pk}/documents/", {"file": SimpleUploadedFile(name, content)}, format="multipart"
        )

    return do


def long_warranty() -> bytes:
    """2.8 M characters of distinct clauses: under the text limit, seconds of chunking."""
    clauses = (
        " ".join(f"Clause {p}.{n}: the warranty covers pump {p * 31 + n} for {n % 5 + 1} years." for n in range(30))
        for p in range(1300)
    )
    return "\n\n".join(clauses).encode()


def document_error(tenant_api: Any, tenant: Any, document_id: str) -> tuple[str, str]:
    """The document's final status and error, as the API shows them."""
    wait_for_status(document_id, timeout=90)
    body = tenant_api.get(f"/api/tenants/{tenant.pk}/documents/{document_id}/").json()
    return body["status"], body["error"]


@pytest.fixture
def admin_client(db: Any) -> Iterator[Client]:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-long-enough")
    client = Client()
    client.force_login(user)
    yield client


def test_docx_bomb_fails_on_its_declared_size_and_the_worker_indexes_the_next_document(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any, admin_client: Client
) -> None:
    bomb = docx_with_body(paragraphs(2_000_000))  # 383 KB, 2,000,000 paragraphs, ~114 MB of XML
    assert len(bomb) < 400_000

    bombed = upload("report.docx", bomb)
    after = upload("after.md", b"# Opening hours\n\nThe Lisbon shop opens at nine.")

    assert bombed.status_code == 201, bombed.content
    assert document_error(tenant_api, tenant, bombed.json()["id"]) == (
        "failed",
        "The Word file's text expands to 114 MB of XML; the limit is 50 MB. Split it into smaller files.",
    )
    assert wait_for_status(after.json()["id"]).status == Document.Status.INDEXED
    assert not Chunk.objects.filter(document_id=bombed.json()["id"]).exists()
    page = admin_client.get(f"/admin/knowledge/document/{bombed.json()['id']}/change/")
    assert "The Word file&#x27;s text expands to 114 MB of XML; the limit is 50 MB." in page.content.decode()


def test_docx_with_more_paragraphs_than_the_limit_fails(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any
) -> None:
    response = upload("list.docx", docx_with_body(paragraphs(60_000)))  # 42 KB

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "The document has more than 50,000 paragraphs (the limit); split it into smaller files.",
    )


def test_docx_with_more_table_cells_than_the_limit_fails(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any
) -> None:
    def table(member: Any) -> None:
        row = b"<w:tr>" + b"<w:tc/>" * 100 + b"</w:tr>"  # empty cells: no paragraph to count
        member.write(b"<w:tbl>" + row * 2001 + b"</w:tbl>")

    response = upload("grid.docx", docx_with_body(table))  # 200,100 cells

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "The Word file has more than 200,000 table cells (the limit); split it into smaller files.",
    )


def test_pdf_with_more_pages_than_the_limit_fails(live_worker: Any, upload: Any, tenant: Any, tenant_api: Any) -> None:
    response = upload("catalogue.pdf", make_pdf([f"Page {n} of the catalogue." for n in range(2001)]))

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "The PDF has 2,001 pages; the limit is 2,000. Split it into smaller files.",
    )


def test_text_longer_than_the_limit_fails(live_worker: Any, upload: Any, tenant: Any, tenant_api: Any) -> None:
    response = upload("dump.txt", b"lorem ipsum " * 250_001)  # 3,000,012 characters

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "The document has more than 3,000,000 characters of text (the limit); split it into smaller files.",
    )


def test_html_with_more_tags_than_the_limit_fails(live_worker: Any, upload: Any, tenant: Any, tenant_api: Any) -> None:
    response = upload("page.html", b"<html><body>" + b"<p>a</p>" * 300_000 + b"</body></html>")

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "The HTML has more than 200,000 tags (the limit); split it into smaller files.",
    )


def test_parsing_over_its_time_limit_fails_and_the_worker_indexes_the_next_document(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any, settings: Any
) -> None:
    settings.KNOWLEDGE_PARSE_TIME_LIMIT_SECONDS = 1
    slow = upload("warranty.txt", long_warranty())  # the e5 tokenizer chunks it in ~5 s on an idle machine
    after = upload("after.md", b"# Opening hours\n\nThe Lisbon shop opens at nine.")

    assert document_error(tenant_api, tenant, slow.json()["id"]) == (
        "failed",
        "Reading the file took longer than 1 s (the limit); split it into smaller files.",
    )
    assert wait_for_status(after.json()["id"]).status == Document.Status.INDEXED


def test_indexing_over_its_time_limit_stops_and_the_worker_indexes_the_next_document(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any, settings: Any
) -> None:
    settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS = 2
    sentences = " ".join(f"Clause {n} says the warranty covers part number {n * 7919}." for n in range(2000))
    slow = upload("terms.txt", sentences.encode())  # ~60 chunks: embedding them takes far longer than 2 s

    assert document_error(tenant_api, tenant, slow.json()["id"]) == (
        "failed",
        "Indexing took longer than 2 s (the limit) and was stopped; split the document into smaller files.",
    )
    document = Document.objects.get(pk=slow.json()["id"])
    assert document.chunks_embedded < document.chunks_total
    settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS = 600
    after = upload("after.md", b"# Opening hours\n\nThe Lisbon shop opens at nine.")
    assert wait_for_status(after.json()["id"]).status == Document.Status.INDEXED


@pytest.fixture
def prefork_indexing_worker(transactional_db: Any, media_root: Any) -> Iterator[Callable[[dict[str, str]], Any]]:
    """``start(env)``: the indexing worker as `make run` starts it (a prefork process), on the test
    database and media folder, with ``env`` added to its environment."""
    from urllib.parse import urlparse, urlunparse

    from django.conf import settings
    from django.db import connection

    from config.celery import app
    from config.launcher import indexing_worker_command

    workers: list[subprocess.Popen[bytes]] = []

    def start(extra: dict[str, str]) -> Any:
        env = dict(os.environ)
        url = urlparse(settings.DATABASE_URL)
        env["DATABASE_URL"] = urlunparse(url._replace(path="/" + connection.settings_dict["NAME"]))
        env["MEDIA_ROOT"] = str(media_root)
        env.update(extra)
        env.setdefault("INDEXING_WORKER_CONCURRENCY", "1")
        env["HONCHO_PROCESS_NAME"] = f"prefork-test-{os.getpid()}"  # the Procfile's node name: <this>@%h
        name = f"{env['HONCHO_PROCESS_NAME']}@%h"
        command = indexing_worker_command(env)
        worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers.append(worker)
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name.replace("%h", os.uname().nodename)], timeout=1.0):
            assert worker.poll() is None and time.monotonic() < deadline, "the prefork worker did not start"
        return worker

    yield start
    for worker in workers:
        worker.terminate()
        worker.wait(timeout=60)


def test_celery_soft_time_limit_stops_a_run_in_the_prefork_worker(
    prefork_indexing_worker: Any, upload: Any, tenant: Any, tenant_api: Any, settings: Any
) -> None:
    # Parsing and chunking may take 600 s, the whole run 2 s, and the run checks its own deadline only
    # between embedding batches: only Celery's soft limit can stop it before that, while the e5
    # tokenizer chunks these 2.8 M characters (~5 s on an idle machine).
    settings.KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS = 2  # the uploader's: Celery sends the limits with the task
    prefork_indexing_worker({"KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS": "2", "KNOWLEDGE_PARSE_TIME_LIMIT_SECONDS": "600"})
    response = upload("warranty.txt", long_warranty())

    assert document_error(tenant_api, tenant, response.json()["id"]) == (
        "failed",
        "Indexing took longer than 2 s (the limit) and was stopped; split the document into smaller files.",
    )
    assert (
        Document.objects.get(pk=response.json()["id"]).keyword_ready_at is None
    )  # stopped before its chunks were stored


def test_a_run_whose_worker_died_ends_failed_instead_of_processing_forever(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from knowledge.indexing import stall_timeout

    orphan = upload("orphan.md", b"# Orphan\n\nIts worker was killed.").json()["id"]
    wait_for_status(orphan)
    # What a SIGKILLed worker (or a hard time limit) leaves behind: a run claimed long ago, never finished.
    Document.objects.filter(pk=orphan).update(
        status=Document.Status.PROCESSING, claimed_at=timezone.now() - stall_timeout() - timedelta(seconds=1)
    )

    next_one = upload("next.md", b"# Next\n\nAny indexing task checks for dead runs first.")

    assert wait_for_status(next_one.json()["id"]).status == Document.Status.INDEXED
    status, error = document_error(tenant_api, tenant, orphan)
    assert status == "failed"
    assert error.startswith("Indexing stopped without finishing (the worker was stopped, ran out of memory or")


def test_pdf_bytes_named_txt_are_indexed_as_a_pdf(live_worker: Any, upload: Any, tenant: Any) -> None:
    response = upload("price-list.txt", make_pdf(["Tandem bicycles cost 900 euros."]))

    assert response.status_code == 201
    assert response.json()["format"] == "pdf"
    document = wait_for_status(response.json()["id"])
    assert (document.status, document.pages) == ("indexed", 1)
    assert list(Chunk.objects.filter(document=document).values_list("content", flat=True)) == [
        "Tandem bicycles cost 900 euros."
    ]


def test_binary_content_under_a_text_name_is_refused(upload: Any, tenant: Any) -> None:
    png = upload("notes.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    noise = upload("notes.md", bytes(range(256)) * 4)

    assert png.status_code == noise.status_code == 415
    assert png.json()["error"] == {
        "code": "unsupported_media_type",
        "message": "The file's content is a PNG image, not a PDF, Word (.docx), Markdown, text or HTML file.",
        "details": {},
    }
    assert noise.json()["error"]["message"].startswith("The file's content is binary data")
    assert not Document.objects.for_tenant(tenant).exists()


def test_a_file_named_pdf_or_docx_that_is_not_one_is_refused(upload: Any, tenant: Any) -> None:
    pdf = upload("invoice.pdf", b"Dear customer, your invoice is attached.")
    docx = upload("letter.docx", b"Dear customer, your letter is attached.")

    assert (pdf.status_code, docx.status_code) == (415, 415)
    assert pdf.json()["error"]["message"] == "The file is named as a PDF but its content is not a PDF (no %PDF header)."
    assert docx.json()["error"]["message"] == (
        "The file is named as a Word (.docx) document but its content is not one (not a ZIP)."
    )
    assert not Document.objects.for_tenant(tenant).exists()


def test_an_empty_file_is_never_the_duplicate_of_another_empty_file(upload: Any, tenant: Any) -> None:
    empty_txt = upload("empty.txt", b"")
    zero_pdf = upload("zero.pdf", b"")

    assert (empty_txt.status_code, zero_pdf.status_code) == (201, 201)
    assert zero_pdf.json()["id"] != empty_txt.json()["id"]
    assert zero_pdf.json()["duplicate"] is False
    assert [(d["filename"], d["format"], d["status"], d["error"]) for d in (empty_txt.json(), zero_pdf.json())] == [
        ("empty.txt", "text", "failed", "The file is empty."),
        ("zero.pdf", "pdf", "failed", "The file is empty."),
    ]
