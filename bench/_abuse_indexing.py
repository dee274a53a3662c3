"""What a hostile tenant's documents cost the indexing worker, on the worker `make run` starts.

The indexing worker is started with ``config.launcher.indexing_worker_command`` (the Procfile's prefork
`indexing` process, here with concurrency 1) on a dedicated, kept database (``bench_abuse_indexing``); uploads go
through ``knowledge.services.document_upload`` and the real Redis broker.

a. Two DOCX bombs, built here, each on a fresh worker: 383 KB expanding to ~114 MB of XML (2,000,000
   paragraphs), and 37 KB with 20,000 paragraphs. For each: time from upload to the final status, the
   document's status and error, and the peak resident memory (VmHWM) of the worker's processes.
   Targets: <= 30 s, <= 512 MB, the bomb ``failed``.
b. Tenant A has 1,400 documents queued (the worker busy with them); tenant B uploads a one-page PDF:
   the time until B's document is keyword-searchable, and how many of A's documents were indexed
   meanwhile. Target: <= 30 s.

    python -m bench._abuse_indexing (or all of it: python -m bench.abuse)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._docx import docx_with_body, paragraphs

ROOT = Path(__file__).resolve().parent.parent
A_DOCUMENTS = 1400


def _peak_rss_mb(pid: int) -> float:
    """The highest VmHWM among the worker process and its pool children."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    peaks = []
    for one in pids:
        status = Path(f"/proc/{one}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=float("nan"))


class _Worker:
    """The indexing worker as `make run` starts it, on the bench database."""

    def __init__(self, connection: Any):
        from urllib.parse import urlparse, urlunparse

        from django.conf import settings

        from config.launcher import indexing_worker_command

        env = dict(os.environ)
        url = urlparse(settings.DATABASE_URL)
        env["DATABASE_URL"] = urlunparse(url._replace(path="/" + connection.settings_dict["NAME"]))
        env.setdefault("INDEXING_WORKER_CONCURRENCY", "1")  # the figures in docs/security.md are for one
        env["HONCHO_PROCESS_NAME"] = f"bench-indexing-{os.getpid()}"  # the Procfile's node name: <this>@%h
        command = indexing_worker_command(env)
        # A file, not a pipe: a worker blocked on a full pipe would stall the measurement.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the worker; closed in stop)
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.name = f"{env['HONCHO_PROCESS_NAME']}@{_hostname()}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        from config.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the worker exited: {self.log.read().decode()[-2000:]}")
            if app.control.ping(destination=[self.name], timeout=1.0):
                return
        raise RuntimeError("the indexing worker did not answer a ping in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _purge_queues() -> None:
    from config.celery import app

    with app.connection_for_write() as connection:
        for queue in ("indexing", "default", "webhooks"):
            connection.default_channel.queue_purge(queue)


def _fresh_tenant(slug: str) -> Any:
    from tenants import services as tenant_services
    from tenants.models import Tenant

    old = Tenant.objects.filter(slug=slug).first()
    if old is not None:
        tenant_services.tenant_delete(tenant=old)
    return tenant_services.tenant_create(name=slug.replace("-", " ").title(), slug=slug)


def _bombs(connection: Any) -> list[tuple[str, str]]:
    from django.core.files.base import ContentFile

    from knowledge.models import Document
    from knowledge.services import document_upload

    figures: list[tuple[str, str]] = []
    cases = [
        ("383 KB DOCX, 2,000,000 paragraphs (~114 MB of XML)", docx_with_body(paragraphs(2_000_000))),
        ("37 KB DOCX, 20,000 paragraphs", docx_with_body(paragraphs(20_000))),
    ]
    for label, data in cases:
        tenant = _fresh_tenant("bench-docx-bomb")
        worker = _Worker(connection)
        try:
            worker.wait_ready()
            started = time.monotonic()
            document = document_upload(tenant=tenant, file=ContentFile(data, name="report.docx"))
            while document.status not in (Document.Status.INDEXED, Document.Status.FAILED):
                time.sleep(0.1)
                document.refresh_from_db()
            elapsed = time.monotonic() - started
            peak = _peak_rss_mb(worker.process.pid)
        finally:
            worker.stop()
        keyword = (
            f", keyword-searchable after {(document.keyword_ready_at - document.created_at).total_seconds():.1f} s"
            if document.keyword_ready_at
            else ""
        )
        figures += [
            (f"{label} ({len(data) / 1000:.0f} KB): final status", f"{document.status} in {elapsed:.1f} s{keyword}"),
            ("  error", document.error or "-"),
            ("  indexing worker peak RSS (VmHWM, parent and pool child)", f"{peak:.0f} MB"),
        ]
    return figures


def _starvation(connection: Any) -> list[tuple[str, str]]:
    from django.core.files.base import ContentFile

    from bench.indexing import VOCABULARY, make_pdf
    from knowledge import retrieval
    from knowledge.models import Document
    from knowledge.services import document_upload

    tenant_a, tenant_b = _fresh_tenant("bench-bulk-importer"), _fresh_tenant("bench-small-shop")
    t0 = time.monotonic()
    for number in range(A_DOCUMENTS):
        words = [VOCABULARY[(number * 7 + k * 13) % len(VOCABULARY)] for k in range(120)]
        text = f"# Note {number}\n\n" + " ".join(words) + f". Reference {number}."
        document_upload(tenant=tenant_a, file=ContentFile(text.encode(), name=f"note-{number}.md"))
    uploaded_in = time.monotonic() - t0
    a_documents = Document.objects.for_tenant(tenant_a)
    worker = _Worker(connection)
    try:
        worker.wait_ready()
        while a_documents.filter(status=Document.Status.INDEXED).count() < 3:
            time.sleep(0.2)
        a_done_before = a_documents.filter(keyword_ready_at__isnull=False).count()
        started = time.monotonic()
        pdf = make_pdf(1, 120)
        b_document = document_upload(tenant=tenant_b, file=ContentFile(pdf, name="price-list.pdf"))
        while not retrieval.hybrid_search(tenant=tenant_b, query="hydraulic pump calibration", k=3, vector_weight=0):
            time.sleep(0.05)
        b_searchable = time.monotonic() - started
        a_done_after = a_documents.filter(keyword_ready_at__isnull=False).count()
        a_waiting = a_documents.filter(status=Document.Status.PENDING).count()
        b_document.refresh_from_db()
    finally:
        _purge_queues()
        worker.stop()
    return [
        (f"tenant A: {A_DOCUMENTS} documents uploaded (all queued)", f"in {uploaded_in:.1f} s"),
        (
            f"tenant B's one-page PDF ({len(pdf)} bytes) keyword-searchable after",
            f"{b_searchable:.1f} s (status {b_document.status})",
        ),
        ("  tenant A documents indexed meanwhile / still queued", f"{a_done_after - a_done_before} / {a_waiting}"),
    ]


def run() -> list[tuple[str, str]]:
    """Both measurements; the figures as (label, value) pairs."""
    os.environ.pop("EMBEDDING_CACHE_DIR", None)
    from bench._knowledge_setup import setup

    connection = setup("bench_abuse_indexing")
    try:
        return _bombs(connection) + _starvation(connection)
    finally:
        _purge_queues()


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    for label, value in run():
        print(f"{label:<78} {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
