from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from events.models import Event
from knowledge import retrieval
from knowledge.models import Chunk, ChunkTerm, Document, LexicalStats, TermStats
from tests.knowledge.conftest import DOCUMENTS, wait_for_status

POLICY_MD = b"""# Returns policy

Items can be returned within 30 days of delivery for a full refund.

## Damaged goods

If your parcel arrives damaged, send us a photo and we replace it free of charge.

# Shipping

We ship to Portugal, Spain and France with tracked delivery in 3 to 5 working days.
"""


def test_markdown_upload_is_indexed_with_sections_and_events(live_worker: Any, upload: Any, tenant: Any) -> None:
    response = upload("policy.md", POLICY_MD, title="Store policy")

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "pending"
    document = wait_for_status(response.json()["id"])
    assert document.status == Document.Status.INDEXED, document.error
    chunks = list(Chunk.objects.for_tenant(tenant).filter(document=document).order_by("position"))
    assert [c.section for c in chunks] == ["Returns policy", "Returns policy > Damaged goods", "Shipping"]
    assert chunks[1].content.startswith("Damaged goods\n\nIf your parcel arrives damaged")
    assert all(c.embedding_model == "local:multilingual-e5-small" for c in chunks)
    assert document.chunks_total == document.chunks_embedded == 3
    assert document.storage_name.startswith(f"{tenant.pk}/documents/{document.pk}/")
    types = list(
        Event.objects.for_tenant(tenant)
        .filter(type__startswith="document.")
        .order_by("id")
        .values_list("type", flat=True)
    )
    assert types == ["document.uploaded", "document.indexed"]
    results = retrieval.search(tenant=tenant, query="my parcel arrived broken, what can I do?")
    assert results[0].section == "Returns policy > Damaged goods"
    assert results[0].document_title == "Store policy"
    assert set(results[0].scores) == {"keyword", "vector", "fused"}


def test_every_format_is_parsed_into_searchable_chunks(live_worker: Any, upload: Any, tenant: Any) -> None:
    files = {
        name: (DOCUMENTS / name).read_bytes() for name in ("notes.txt", "faq.html", "manual.docx", "catalogue.pdf")
    }
    ids = {name: upload(name, content).json()["id"] for name, content in files.items()}
    documents = {name: wait_for_status(i) for name, i in ids.items()}

    assert {n: d.status for n, d in documents.items()} == dict.fromkeys(files, "indexed")
    assert {n: d.format for n, d in documents.items()} == {
        "notes.txt": "text",
        "faq.html": "html",
        "manual.docx": "docx",
        "catalogue.pdf": "pdf",
    }
    html_chunk = Chunk.objects.get(document_id=ids["faq.html"])
    assert (html_chunk.section, html_chunk.content) == ("Warranty", "Warranty\n\nEvery kettle has a two year warranty.")
    assert Chunk.objects.get(document_id=ids["manual.docx"]).section == "Cleaning"
    assert documents["catalogue.pdf"].pages == 2
    top = retrieval.search(tenant=tenant, query="tandem tricycles")[0]
    assert (top.document_id, top.page) == (documents["catalogue.pdf"].pk, 2)


def test_identical_content_is_recognised_not_indexed_twice(live_worker: Any, upload: Any, tenant: Any) -> None:
    first = upload("a.txt", b"Our support line is open on weekdays.")
    second = upload("copy-of-a.txt", b"Our support line is open on weekdays.")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["duplicate"] is True
    wait_for_status(first.json()["id"])
    assert Document.objects.for_tenant(tenant).count() == 1
    assert Event.objects.for_tenant(tenant).filter(type="document.uploaded").count() == 1


def test_empty_and_corrupt_files_end_failed_with_a_reason(live_worker: Any, upload: Any, tenant: Any) -> None:
    empty = upload("empty.txt", b"")
    corrupt = upload("broken.pdf", b"%PDF-1.4 this is not really a pdf")
    punctuation = upload("dots.md", b"# ...\n\n--- !!! ...\n")

    reasons = {
        name: wait_for_status(r.json()["id"]).error
        for name, r in [("empty", empty), ("corrupt", corrupt), ("dots", punctuation)]
    }
    assert Document.objects.for_tenant(tenant).filter(status="failed").count() == 3
    assert reasons["empty"] == "The file is empty."
    assert reasons["corrupt"].startswith("The PDF is damaged and could not be read")
    assert reasons["dots"].startswith("No text could be extracted")
    assert Chunk.objects.for_tenant(tenant).count() == 0
    assert Event.objects.for_tenant(tenant).filter(type="document.failed").count() == 3


def test_too_large_gets_413_and_unsupported_type_415(upload: Any, tenant: Any, settings: Any) -> None:
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 100

    too_large = upload("big.txt", b"x" * 101)
    unsupported = upload("tool.exe", b"MZ\x90\x00")

    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "payload_too_large"
    assert unsupported.status_code == 415
    assert unsupported.json()["error"]["message"].startswith("Unsupported file type '.exe'")
    assert Document.objects.for_tenant(tenant).count() == 0


def test_file_names_cannot_escape_the_tenant_folder(upload: Any, tenant: Any) -> None:
    response = upload("../../../etc/passwd.txt", b"root:x:0:0")

    document = Document.objects.get(pk=response.json()["id"])
    assert document.storage_name == f"{tenant.pk}/documents/{document.pk}/passwd.txt"
    assert default_storage.exists(document.storage_name)


def test_delete_removes_chunks_postings_file_and_emits(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any
) -> None:
    document = wait_for_status(upload("faq.md", POLICY_MD).json()["id"])
    assert LexicalStats.objects.get(tenant=tenant).chunk_count == 3

    response = tenant_api.delete(f"/api/tenants/{tenant.pk}/documents/{document.pk}/")

    assert response.status_code == 204
    assert not Document.objects.filter(pk=document.pk).exists()
    assert Chunk.objects.for_tenant(tenant).count() == 0
    assert ChunkTerm.objects.for_tenant(tenant).count() == 0
    assert TermStats.objects.for_tenant(tenant).count() == 0
    assert LexicalStats.objects.get(tenant=tenant).chunk_count == 0
    assert not default_storage.exists(document.storage_name)
    assert Event.objects.for_tenant(tenant).filter(type="document.deleted").count() == 1
    assert retrieval.search(tenant=tenant, query="refund") == []


def test_reindex_rebuilds_chunks_after_a_settings_change(
    live_worker: Any, upload: Any, tenant: Any, tenant_api: Any, settings: Any
) -> None:
    document = wait_for_status(upload("faq.md", POLICY_MD).json()["id"])
    old_ids = set(Chunk.objects.filter(document=document).values_list("id", flat=True))
    settings.KNOWLEDGE_CHUNK_TOKENS = 24  # smaller chunks: the re-index must produce more of them

    response = tenant_api.post(f"/api/tenants/{tenant.pk}/documents/{document.pk}/reindex/")

    assert response.status_code == 202
    wait_until_reindexed = wait_for_status(document.pk, "indexed", timeout=60)
    new_ids = set(Chunk.objects.filter(document=document).values_list("id", flat=True))
    assert not old_ids & new_ids
    assert wait_until_reindexed.chunks_total == len(new_ids) > 3
    assert LexicalStats.objects.get(tenant=tenant).chunk_count == len(new_ids)
    assert Event.objects.for_tenant(tenant).filter(type="document.indexed").count() == 2


def test_deleting_the_tenant_removes_documents_chunks_postings_and_files(tenant: Any, tenant_api: Any) -> None:
    from knowledge import indexing
    from tenants.services import tenant_delete

    response = tenant_api.post(
        f"/api/tenants/{tenant.pk}/documents/",
        {"file": SimpleUploadedFile("faq.md", POLICY_MD)},
        format="multipart",
    )
    document = indexing.index_document(document_id=response.json()["id"])
    assert document is not None and document.status == "indexed"
    assert ChunkTerm.objects.for_tenant(tenant).exists()
    assert TermStats.objects.for_tenant(tenant).exists()

    tenant_delete(tenant=tenant)

    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(tenant_id=tenant.pk).exists()
    assert not ChunkTerm.objects.filter(tenant_id=tenant.pk).exists()
    assert not TermStats.objects.filter(tenant_id=tenant.pk).exists()
    assert not LexicalStats.objects.filter(tenant_id=tenant.pk).exists()
    assert not default_storage.exists(document.storage_name)
