"""Documents, their chunks, and the term statistics behind the BM25 keyword leg.

Design (measured and explained in docs/knowledge.md):
- ``Chunk.embedding`` holds the float32 vector (bytea) and each chunk records the model that
  embedded it, so tenants on different models (and a tenant migrating between models) share one
  table. The vector leg scores in the application (knowledge.vectors), because the embedded
  pgvector 0.8.2 build dies with SIGILL on this CPU for any vector of more than 16 dimensions.
- ``ChunkTerm`` holds BM25 postings (lexeme, term frequency, chunk length) produced by PostgreSQL's
  own text search parser and the tenant's language configuration; ``LexicalStats`` keeps the
  per-tenant corpus size and total length, updated in the same transaction as the postings.
"""

from __future__ import annotations

import uuid

from django.db import models

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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    keyword_ready_at = models.DateTimeField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "sha256"], name="document_unique_tenant_sha256")]
        indexes = [
            models.Index(fields=["tenant", "status"], name="document_tenant_status"),
            models.Index(fields=["tenant", "created_at"], name="document_tenant_created"),
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
    # float32 little-endian, L2-normalised (see knowledge.vectors for why not a pgvector column).
    embedding = models.BinaryField(null=True, blank=True, editable=False)
    embedding_model = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["document_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "document", "position"], name="chunk_unique_position"),
        ]
        indexes = [models.Index(fields=["tenant", "embedding_model"], name="chunk_tenant_model")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


class ChunkTerm(TenantOwned):
    """One BM25 posting: lexeme ``term`` occurs ``tf`` times in ``chunk`` (of ``doc_len`` lexemes)."""

    pk = models.CompositePrimaryKey("tenant", "chunk", "term")
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="+", db_index=False)
    term = models.CharField(max_length=200)
    tf = models.PositiveIntegerField()
    doc_len = models.PositiveIntegerField()

    class Meta:
        # Covering index: the keyword leg scores from index-only scans of (tenant, term).
        indexes = [models.Index(fields=["tenant", "term"], include=["chunk", "tf", "doc_len"], name="chunkterm_term")]


class LexicalStats(TenantOwned):
    """Corpus statistics of a tenant's keyword index (BM25's N and average length)."""

    chunk_count = models.BigIntegerField(db_default=0)
    total_length = models.BigIntegerField(db_default=0)
    # Bumped with every change of the tenant's vectors: search processes reload their copy when it moved.
    vector_version = models.BigIntegerField(db_default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="lexicalstats_unique_tenant")]
        verbose_name_plural = "lexical stats"
