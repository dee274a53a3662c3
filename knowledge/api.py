"""Documents and search over REST, under /api/tenants/{id}/ (tenant-scoped; others' objects 404)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from config.ingress import CappedTemporaryFileUploadHandler
from config.openapi import error_response
from knowledge import retrieval, services
from knowledge.models import Document
from tenants.auth import TenantScopedMixin


class DocumentSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)

    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "filename",
            "format",
            "size_bytes",
            "sha256",
            "status",
            "error",
            "chunks_total",
            "chunks_embedded",
            "progress",
            "tokens_total",
            "pages",
            "embedding_model",
            "created_at",
            "updated_at",
            "keyword_ready_at",
            "indexed_at",
        ]
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, help_text="PDF, DOCX, Markdown, plain text or HTML")
    title = serializers.CharField(
        required=False, allow_blank=True, max_length=300, help_text="shown in citations; default: the file name"
    )


class UploadedDocumentSerializer(DocumentSerializer):
    duplicate = serializers.BooleanField(
        read_only=True, help_text="true: the tenant already had this exact content; this is that document"
    )

    class Meta(DocumentSerializer.Meta):
        fields = [*DocumentSerializer.Meta.fields, "duplicate"]
        read_only_fields = fields


class DocumentListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = DocumentSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self) -> Any:
        queryset = Document.objects.for_tenant(self.tenant).order_by("-created_at")
        wanted = self.request.query_params.get("status")
        if wanted:
            if wanted not in Document.Status.values:
                raise ApiError(400, "validation_error", "Unknown status.", {"status": Document.Status.values})
            queryset = queryset.filter(status=wanted)
        return queryset

    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=Document.Status.values)],
        responses={200: DocumentSerializer(many=True), 400: error_response(400, "Unknown `status`.")},
        summary="List documents with their indexing status and progress",
        description="The tenant's documents, newest first. `status` goes `pending` -> `processing` -> `indexed` "
        "(or `failed`, with `error`); `progress` (0 to 1) follows the embedding of its chunks. A document is "
        "searchable by keywords from `keyword_ready_at`, by meaning from `indexed_at`.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DocumentSerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        responses={
            201: UploadedDocumentSerializer,
            200: UploadedDocumentSerializer,
            400: error_response(400, "No multipart field `file`, or a file that cannot be read."),
            413: error_response(413, "The file is over the upload limit (KNOWLEDGE_MAX_UPLOAD_BYTES)."),
            415: error_response(415, "Not a PDF, DOCX, Markdown, text or HTML file.", "unsupported_media_type"),
        },
        summary="Upload a document (PDF, DOCX, Markdown, text, HTML); indexing starts in the background",
        description="Send the file as multipart/form-data field `file` (and optionally `title`). The answer "
        "comes before indexing: 201 with the new document in status `pending`; poll it (or wait for the "
        "`document.indexed` event) until `indexed`. Uploading content the tenant already has answers 200 with "
        "that document and `duplicate: true`. 413 over the size limit, 415 for an unsupported type.",
    )
    def post(self, request: Request, tenant_id: UUID) -> Response:
        # Streamed to a temporary file and cut at the limit as it arrives, never whole in memory.
        request._request.upload_handlers = [
            CappedTemporaryFileUploadHandler(request._request, limit=settings.KNOWLEDGE_MAX_UPLOAD_BYTES)
        ]
        if "file" not in request.FILES:
            raise ApiError(
                400, "validation_error", "Send the document as multipart field 'file'.", {"file": ["required"]}
            )
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        try:
            document = services.document_upload(
                tenant=self.tenant, file=upload.validated_data["file"], title=upload.validated_data.get("title", "")
            )
        except services.DocumentError as exc:
            raise ApiError(exc.status_code, exc.code, str(exc)) from None
        data = DocumentSerializer(document).data
        data["duplicate"] = bool(getattr(document, "is_duplicate", False))
        return Response(data, status=status.HTTP_200_OK if data["duplicate"] else status.HTTP_201_CREATED)


class DocumentLookupMixin(TenantScopedMixin):
    kwargs: dict[str, Any]

    def get_object(self) -> Document:
        document = Document.objects.for_tenant(self.tenant).filter(pk=self.kwargs["document_id"]).first()
        if document is None:
            raise ApiError(404, "not_found", "Document not found.")
        return document


class DocumentDetailView(DocumentLookupMixin, generics.GenericAPIView):
    serializer_class = DocumentSerializer

    @extend_schema(
        responses=DocumentSerializer,
        summary="A document with its indexing status",
        description="Poll this after an upload: `status`, `progress`, and `error` when indexing failed.",
    )
    def get(self, request: Request, tenant_id: UUID, document_id: UUID) -> Response:
        return Response(DocumentSerializer(self.get_object()).data)

    @extend_schema(
        responses={204: None},
        summary="Delete a document, its chunks and its file",
        description="The assistant stops citing it at once; an indexing run in progress stops.",
    )
    def delete(self, request: Request, tenant_id: UUID, document_id: UUID) -> Response:
        services.document_delete(document=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentReindexView(DocumentLookupMixin, APIView):
    """An action: POST only; it must not inherit the document's GET and DELETE."""

    @extend_schema(
        request=None,
        responses={202: DocumentSerializer},
        summary="Index the document again",
        description="Back to `pending` and to the end of the tenant's indexing queue, e.g. after changing the "
        "embedding model in the tenant settings or after a failure. The answer is the document, before indexing.",
    )
    def post(self, request: Request, tenant_id: UUID, document_id: UUID) -> Response:
        document = services.document_reindex(document=self.get_object())
        return Response(DocumentSerializer(document).data, status=status.HTTP_202_ACCEPTED)


class SearchResultSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document_id = serializers.UUIDField()
    document_title = serializers.CharField()
    content = serializers.CharField()
    page = serializers.IntegerField(allow_null=True)
    section = serializers.CharField()
    position = serializers.IntegerField()
    score = serializers.FloatField()
    scores = serializers.DictField(child=serializers.FloatField())


class SearchView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = SearchResultSerializer
    pagination_class = None

    @extend_schema(
        parameters=[
            OpenApiParameter("q", OpenApiTypes.STR, required=True, description="the question"),
            OpenApiParameter("k", OpenApiTypes.INT, description="results (default: the tenant's ragConfig.topK)"),
        ],
        responses={
            200: inline_serializer(
                "SearchResponse", {"query": serializers.CharField(), "results": SearchResultSerializer(many=True)}
            ),
            400: error_response(400, "No `q`, or `k` not an integer from 1 to 50."),
        },
        summary="Hybrid (BM25 + vector) search of the tenant's documents",
        description="The passages the assistant would be given for this question: keyword (BM25) and vector "
        "similarity results fused by the tenant's ragConfig, best first. `score` is the relevance, `scores` "
        "its parts (keyword, vector, fused); `page` and `section` locate the passage in its document. Use it to check what the assistant "
        "knows before going live.",
        examples=[
            OpenApiExample(
                "One passage",
                response_only=True,
                value={
                    "query": "how long does delivery take?",
                    "results": [
                        {
                            "chunk_id": 4812,
                            "document_id": "0b7c6a52-0d3e-4b8e-9a57-8a0f1f2b6c11",
                            "document_title": "Shipping policy",
                            "content": "Orders ship within 24 hours; delivery takes 2 to 4 working days.",
                            "page": 1,
                            "section": "Delivery times",
                            "position": 3,
                            "score": 0.82,
                            "scores": {"keyword": 0.61, "vector": 0.91, "fused": 0.79},
                        }
                    ],
                },
            )
        ],
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        query = request.query_params.get("q", "").strip()
        if not query:
            raise ApiError(400, "validation_error", "Give the question as ?q=...", {"q": ["required"]})
        k_raw = request.query_params.get("k")
        k = None
        if k_raw not in (None, ""):
            try:
                k = int(k_raw)
            except ValueError:
                raise ApiError(400, "validation_error", "k must be an integer.", {"k": ["1..50"]}) from None
            if not 1 <= k <= 50:
                raise ApiError(400, "validation_error", "k must be between 1 and 50.", {"k": ["1..50"]})
        results = retrieval.search(tenant=self.tenant, query=query, k=k)
        return Response({"query": query, "results": [asdict(r) for r in results]})
