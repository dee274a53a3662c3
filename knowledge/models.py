"""Documents, their chunks, and the term statistics behind the BM25 keyword leg.

Design (measured and explained in docs/knowledge.md):
- ``Chunk.embedding`` is a pgvector ``vector`` of any dimension, and each chunk records the model
  that embedded it, so tenants on different models (and a tenant migrating between models) share
  one table. Each common dimension has a partial HNSW index over the column cast to that
  dimension (migration 0007; knowledge.vectors searches through it).
- ``ChunkTerm`` holds BM25 postings (lexeme, term frequency, chunk length, impact) produced by
  PostgreSQL's own text search parser and the tenant's language configuration; ``TermStats`` the
  tenant's document frequency per lexeme and ``LexicalStats`` its corpus size and total length, all
  updated in the same transaction as the postings.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

from tenants.scoping import TenantOwned


class Document(TenantOwned):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        INDEXED = "indexed", "Indexed"
        FAILED = "failed", "Failed"

    class Format(models.TextChoices):
        PDF = "pdf", "PDF"
        DOCX = "docx", "Word (DOCX)"
        MARKDOWN = "markdown", "Markdown"
        TEXT = "text", "Plain text"
        HTML = "html", "HTML"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=300)
    filename = models.CharField(max_length=255)
    format = models.CharField(max_length=10, choices=Format.choices)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_name = models.CharField(max_length=500)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, default="")
    # Progress: chunks stored (keyword-searchable) and chunks embedded (vector-searchable).
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    tokens_total = models.PositiveIntegerField(default=0)
    pages = models.PositiveIntegerField(null=True, blank=True)
    embedding_model = models.CharField(max_length=200, blank=True, default="")
    # Bumped by every indexing run; a run that finds a newer generation stops (a re-index won).
    index_generation = models.PositiveIntegerField(default=0)
    # The indexing queue (knowledge.indexing.claim_next): a pending document may be claimed from
    # ``queued_at`` on (later after a transient failure); ``claimed_at`` is when its current run
    # started; the tenant whose latest claim is oldest is served first.
    queued_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    index_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    keyword_ready_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Empty files all share one digest and are never duplicates of each other.
            models.UniqueConstraint(
                fields=["tenant", "sha256"], condition=models.Q(size_bytes__gt=0), name="document_unique_tenant_sha256"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "status"], name="document_tenant_status"),
            models.Index(fields=["tenant", "created_at"], name="document_tenant_created"),
            models.Index(
                fields=["tenant", "queued_at"], condition=models.Q(status="pending"), name="document_pending_queue"
            ),
            models.Index(fields=["tenant", "claimed_at"], name="document_tenant_claimed"),
            models.Index(
                fields=["tenant", "claimed_at"], condition=models.Q(status="processing"), name="document_processing"
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def progress(self) -> float:
        if self.status == self.Status.INDEXED:
            return 1.0
        if not self.chunks_total:
            return 0.0
        return round(self.chunks_embedded / self.chunks_total, 4)


class Chunk(TenantOwned):
    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks", db_index=False)
    position = models.PositiveIntegerField()
    content = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True)
    section = models.CharField(max_length=300, blank=True, default="")
    token_count = models.PositiveIntegerField(default=0)
    # Number of lexemes the BM25 leg counted in this chunk (its "document length").
    lexical_length = models.PositiveIntegerField(default=0)
    # L2-normalised; its dimension is the model's (knowledge.vectors.INDEXED_DIMENSIONS have an HNSW index).
    embedding = VectorField(null=True, blank=True, editable=False)
    embedding_model = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["document_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "document", "position"], name="chunk_unique_position"),
        ]
        # The vector leg's exact scan of a tenant's vectors of one model (a small tenant, or the
        # fallback when the HNSW scan found fewer than asked) reads the tenant's rows through this index.
        indexes = [
            models.Index(
                fields=["tenant", "embedding_model", "id"],
                condition=models.Q(embedding__isnull=False),
                name="chunk_embedded",
            )
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


class RealField(models.FloatField):
    """A 4-byte ``real`` column (Django's FloatField is 8-byte ``double precision``)."""

    def db_type(self, connection: object) -> str:
        return "real"


class ChunkTerm(TenantOwned):
    """One BM25 posting: lexeme ``term`` occurs ``tf`` times in ``chunk`` (of ``doc_len`` lexemes).

    ``impact`` is the posting's BM25 term-frequency component (tf saturation and length
    normalisation) with the tenant's average length when it was written: only the order in which the
    keyword leg reads a term's postings (best first); scores are computed from ``tf`` and ``doc_len``
    with the current statistics.
    """

    pk = models.CompositePrimaryKey("tenant", "chunk", "term")
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="+", db_index=False)
    term = models.CharField(max_length=200)
    tf = models.PositiveIntegerField()
    doc_len = models.PositiveIntegerField()
    impact = RealField(db_default=0)

    class Meta:
        # Covering index, impact-ordered: the keyword leg reads a term's best postings first from
        # index-only scans of (tenant, term) and can stop after a budget of them.
        indexes = [
            models.Index(
                fields=["tenant", "term", "-impact"], include=["chunk", "tf", "doc_len"], name="chunkterm_impact"
            )
        ]


class TermStats(TenantOwned):
    """Document frequency of a lexeme in the tenant's keyword index (BM25's df), kept with the postings."""

    pk = models.CompositePrimaryKey("tenant", "term")
    term = models.CharField(max_length=200)
    df = models.PositiveIntegerField()

    class Meta:
        verbose_name_plural = "term stats"


class LexicalStats(TenantOwned):
    """Corpus statistics of a tenant's keyword index (BM25's N and average length)."""

    chunk_count = models.BigIntegerField(db_default=0)
    total_length = models.BigIntegerField(db_default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="lexicalstats_unique_tenant")]
        verbose_name_plural = "lexical stats"
