"""API routes of this app, included under /api/ by config.urls."""

from django.urls import path

from knowledge import api

urlpatterns = [
    path("tenants/<uuid:tenant_id>/documents/", api.DocumentListView.as_view(), name="document-list"),
    path(
        "tenants/<uuid:tenant_id>/documents/<uuid:document_id>/",
        api.DocumentDetailView.as_view(),
        name="document-detail",
    ),
    path(
        "tenants/<uuid:tenant_id>/documents/<uuid:document_id>/reindex/",
        api.DocumentReindexView.as_view(),
        name="document-reindex",
    ),
    path("tenants/<uuid:tenant_id>/search", api.SearchView.as_view(), name="knowledge-search"),
]
