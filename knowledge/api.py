"""Documents and search over REST, under /api/tenants/{id}/ (tenant-scoped; others' objects 404)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from config.ingress import CappedTemporaryFileUploadHandler
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
    file = serializers.FileField(allow_empty_file=True)
    title = serializers.CharField(required=False, allow_blank=True, max_length=300)


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
        responses=DocumentSerializer(many=True),
        summary="List documents with their indexing status and progress",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DocumentSerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        responses={201: DocumentSerializer, 200: DocumentSerializer},
        summary="Upload a document (PDF, DOCX, Markdown, text, HTML); indexing starts in the background",
        description="201 for a new document; 200 with the existing document when the tenant already uploaded "
        "identical content. 413 over the size limit, 415 for an unsupported type.",
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

    @extend_schema(responses=DocumentSerializer, summary="A document with its indexing status")
    def get(self, request: Request, tenant_id: UUID, document_id: UUID) -> Response:
        return Response(DocumentSerializer(self.get_object()).data)

    @extend_schema(responses={204: None}, summary="Delete a document, its chunks and its file")
    def delete(self, request: Request, tenant_id: UUID, document_id: UUID) -> Response:
        services.document_delete(document=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentReindexView(DocumentLookupMixin, APIView):
    """An action: POST only; it must not inherit the document's GET and DELETE."""

    @extend_schema(request=None, responses={202: DocumentSerializer}, summary="Index the document again")
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
        responses=inline_serializer(
            "SearchResponse", {"query": serializers.CharField(), "results": SearchResultSerializer(many=True)}
        ),
        summary="Hybrid (BM25 + vector) search of the tenant's documents",
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
