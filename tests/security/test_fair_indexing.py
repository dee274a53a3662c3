"""One tenant's bulk import never starves another tenant's single document (issue #20, finding 7).

Driven as it happened: tenant A uploads a batch of documents through the API while a real Celery
worker indexes them; tenant B uploads one small document; B's document must become keyword-searchable
(B's search API finds it) as soon as the run in progress ends, while most of A's batch still waits.

The worker is one thread, as ``make run`` starts the indexing worker (one process, concurrency 1):
then the order is exact: between B's upload and B's document becoming searchable, at most the one
run of A that was already in progress finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.models import Document
from tests.conftest import terminate_other_sessions, wait_until

A_DOCUMENTS = 40


@pytest.fixture(autouse=True)
def media_root(tmp_path: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def indexing_worker(transactional_db: Any) -> Iterator[Any]:
    """A real Celery worker on the real Redis broker, one thread, consuming the indexing queue.

    At the end A's batch is still queued: its tasks are purged and its documents deleted, which stops
    the run in progress at its next step; the fixture waits for that task to end (a stopping threads
    pool does not) so it never outlives the test database."""
    from celery import signals
    from celery.contrib.testing.worker import start_worker

    from config.celery import app
    from knowledge.services import document_delete

    running: set[str] = set()

    def started(task_id: str, **_: Any) -> None:
        running.add(task_id)

    def finished(task_id: str, **_: Any) -> None:
        running.discard(task_id)

    signals.task_prerun.connect(started, weak=False)
    signals.task_postrun.connect(finished, weak=False)
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=1,
            perform_ping_check=False,
            shutdown_timeout=60,
            queues=["indexing", "default"],
            loglevel="WARNING",
        ) as worker:
            yield worker
            with app.connection_for_write() as connection:
                connection.default_channel.queue_purge("indexing")
            for document in Document.objects.all():
                document_delete(document=document)
            wait_until(lambda: not running, timeout=60)
    finally:
        signals.task_prerun.disconnect(started)
        signals.task_postrun.disconnect(finished)
    terminate_other_sessions()


def manual(number: int) -> bytes:
    """A few pages of a tenant's product manual: several chunks, so each run takes a while."""
    sentences = [
        f"Model {number}-{n} pumps are serviced every {n + 3} months; check the valve torque and the seal."
        for n in range(160)
    ]
    return ("# Service manual " + str(number) + "\n\n" + " ".join(sentences)).encode()


@pytest.fixture
def upload(api_for: Callable[[Any], Any]) -> Callable[[Any, str, bytes], Any]:
    def do(tenant: Any, name: str, content: bytes) -> Any:
        response = api_for(tenant).post(
            f"/api/tenants/{tenant.pk}/documents/", {"file": SimpleUploadedFile(name, content)}, format="multipart"
        )
        assert response.status_code == 201, response.content
        return response.json()

    return do


def test_a_single_document_is_not_starved_by_another_tenants_bulk_import(
    indexing_worker: Any, make_tenant: Callable[..., Any], api_for: Callable[[Any], Any], upload: Any
) -> None:
    tenant_a, tenant_b = make_tenant("Bulk importer"), make_tenant("Small shop")
    for number in range(A_DOCUMENTS):
        upload(tenant_a, f"manual-{number}.md", manual(number))
    a_documents = Document.objects.for_tenant(tenant_a)
    wait_until(lambda: a_documents.filter(keyword_ready_at__isnull=False).count() >= 2, timeout=120)

    b_document = upload(tenant_b, "hours.txt", b"Opening hours: the Zanzibar kiosk opens at nine on weekdays.")
    b_uploaded_at = Document.objects.get(pk=b_document["id"]).created_at
    search_b = api_for(tenant_b)

    def b_found() -> bool:
        response = search_b.get(f"/api/tenants/{tenant_b.pk}/search", {"q": "Zanzibar kiosk"})
        return [r["document_id"] for r in response.json()["results"]] == [b_document["id"]]

    wait_until(b_found, timeout=120, interval=0.1)

    b_ready_at = Document.objects.get(pk=b_document["id"]).keyword_ready_at
    a_ready_meanwhile = a_documents.filter(keyword_ready_at__gt=b_uploaded_at, keyword_ready_at__lte=b_ready_at).count()
    a_still_waiting = a_documents.filter(keyword_ready_at__isnull=True).count()
    assert a_ready_meanwhile <= 1  # only the run that was in progress when B uploaded
    assert a_still_waiting >= A_DOCUMENTS // 2
