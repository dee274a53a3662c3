"""The knowledge area's metrics: indexing outcomes and durations, retrieval time (counters and
histograms), and the indexing backlog (a scrape-time gauge). Declared when KnowledgeConfig.ready()
imports this module."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from django.db.models import Count

from config.metrics import Sample, counter, histogram, tenant_label
from knowledge.models import Document

counter(
    "documents_indexed_total",
    "Documents whose indexing ended, by outcome (indexed, failed)",
    labels=("outcome",),
    initial=[{"outcome": "indexed"}, {"outcome": "failed"}],
)
histogram(
    "document_indexing_duration_seconds",
    "Indexing runs that indexed their document: parsing, chunking, keyword postings and embedding",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
retrieval_duration = histogram(
    "retrieval_duration_seconds",
    "Hybrid retrieval of a tenant's passages for a query (knowledge.retrieval.search)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

BACKLOG_STATUSES = (Document.Status.PENDING, Document.Status.PROCESSING)


def indexing_queue() -> str:
    return settings.CELERY_TASK_ROUTES.get("knowledge.*", {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE)


def indexing_backlog_gauge() -> Iterable[Sample]:
    """Documents waiting to be indexed (``pending``) or being indexed (``processing``), by the indexing
    queue, tenant (config.metrics.tenant_label: the busiest by slug, the rest summed as other) and status.
    Read from the two statuses' partial indexes."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    rows = Document.objects.filter(status__in=BACKLOG_STATUSES).values("tenant_id", "status").annotate(n=Count("pk"))
    for row in rows:
        totals[(tenant_label(row["tenant_id"]), row["status"])] += row["n"]
    queue = indexing_queue()
    for (tenant, status), n in sorted(totals.items()):
        yield "metachat_indexing_backlog_documents", {"queue": queue, "tenant": tenant, "status": status}, n
