"""A document's page in the admin follows its indexing by itself (a JSON view it polls, scoped to the
user's tenants), tells its place in the fair queue while it waits, and previews its chunks."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from knowledge.models import Document
from tenants.services import staff_user_create
from tests.conftest import wait_until


def owner_client(tenant: Any, username: str = "owner") -> Client:
    user, _ = staff_user_create(tenant=tenant, username=username, role="owner", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


def pending(tenant: Any, title: str, queued_at: Any, **fields: Any) -> Document:
    """A document row waiting in the queue (made directly: no indexing task is queued for it)."""
    return Document.objects.create(
        tenant=tenant, title=title, filename=f"{title}.txt", format="text", size_bytes=1, sha256=uuid.uuid4().hex,
        storage_name="-", queued_at=queued_at, **fields,
    )  # fmt: skip


def progress_url(document: Document) -> str:
    return f"/admin/knowledge/document/{document.pk}/progress/"


def test_progress_endpoint_answers_only_for_the_users_tenants(tenant, other_tenant):
    now = timezone.now()
    mine, theirs = pending(tenant, "mine", now), pending(other_tenant, "theirs", now)
    owner = owner_client(tenant)

    own = owner.get(progress_url(mine))
    other = owner.get(progress_url(theirs))
    anonymous = Client().get(progress_url(mine))

    assert own.status_code == 200 and "no-store" in own["Cache-Control"]
    assert own.json() | {"queue": None} == {
        "id": str(mine.pk), "status": "pending", "status_label": "Pending", "done": False, "progress": 0.0,
        "percent": 0, "chunks_total": 0, "chunks_embedded": 0, "error": "", "indexed_at": None, "queue": None,
    }  # fmt: skip
    assert other.status_code == 404
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_queue_position_follows_the_fair_queue_one_document_per_tenant_in_turn(make_tenant, tenant, other_tenant):
    """Acme (never served) has 3 waiting, Globex (served a minute ago) 2, Initech (never served) 1
    queued after Acme's first: the queue serves Acme, Initech, Globex, Acme, Globex, Acme."""
    initech = make_tenant("Initech")
    start = timezone.now() - timedelta(minutes=10)
    a1, a2, a3 = (pending(tenant, f"a{i}", start + timedelta(seconds=i)) for i in (1, 2, 3))
    b1, b2 = (pending(other_tenant, f"b{i}", start + timedelta(seconds=i)) for i in (1, 2))
    served = pending(other_tenant, "served", start, status="indexed", claimed_at=timezone.now() - timedelta(minutes=1))
    c1 = pending(initech, "c1", start + timedelta(seconds=1.5))
    later = pending(tenant, "retry", timezone.now() + timedelta(minutes=5))
    assert served.status == "indexed"

    def queue(document: Document, client: Client) -> Any:
        return client.get(progress_url(document)).json()["queue"]

    acme, globex, initech_owner = owner_client(tenant), owner_client(other_tenant, "g"), owner_client(initech, "i")
    positions = {
        d.title: queue(d, c)["position"]
        for d, c in [(a1, acme), (a2, acme), (a3, acme), (b1, globex), (b2, globex), (c1, initech_owner)]
    }

    assert positions == {"a1": 1, "c1": 2, "b1": 3, "a2": 4, "b2": 5, "a3": 6}
    assert queue(a3, acme) == {"position": 6, "own_ahead": 2, "others_ahead": 3, "processing": 0, "estimate": True}
    assert queue(later, acme) == {"retry_at": later.queued_at.isoformat(), "estimate": False}
    page = acme.get(f"/admin/knowledge/document/{a3.pk}/change/").content.decode()
    assert "In the queue: position 6 (estimate; 2 of your documents and 3 of other tenants before it)." in page


def test_upload_opens_the_document_page_which_reaches_indexed_and_previews_chunks(live_worker, tenant):
    owner = owner_client(tenant)

    response = owner.post(
        "/admin/knowledge/document/add/",
        {"title": "Handbook", "upload": SimpleUploadedFile(
            "handbook.md", b"# Leave\n\nStaff get 25 days of paid leave per year.\n\n# Hours\n\nWe open at 9.")},
    )  # fmt: skip
    document = Document.objects.for_tenant(tenant).get()
    assert response.status_code == 302 and response["Location"] == f"/admin/knowledge/document/{document.pk}/change/"
    page = owner.get(response["Location"]).content.decode()
    assert 'id="document-progress"' in page and f'data-progress-url="{progress_url(document)}"' in page
    assert "/static/knowledge/progress.js" in page

    final = wait_until(lambda: (d := owner.get(progress_url(document)).json())["done"] and d, timeout=60)
    with_chunks = owner.get(progress_url(document) + "?chunks=1").json()
    page = owner.get(f"/admin/knowledge/document/{document.pk}/change/").content.decode()

    assert (final["status"], final["percent"], final["queue"]) == ("indexed", 100, None)
    assert [(c["position"], c["page"], c["section"], c["content"]) for c in with_chunks["chunks"]] == [
        (0, None, "Leave", "Leave\n\nStaff get 25 days of paid leave per year."),
        (1, None, "Hours", "Hours\n\nWe open at 9."),
    ]
    assert 'data-done="true"' in page and 'id="chunk-preview"' in page
    assert "<td>Leave</td>" in page and "Staff get 25 days of paid leave per year." in page
    assert owner.get("/admin/knowledge/document/try/").status_code == 200
