from django.urls import path

from tenants import api

urlpatterns = [
    path("tenants/", api.TenantListView.as_view(), name="tenant-list"),
    path("tenants/<uuid:tenant_id>/", api.TenantDetailView.as_view(), name="tenant-detail"),
    path("tenants/<uuid:tenant_id>/api-keys/", api.ApiKeyListView.as_view(), name="apikey-list"),
    path(
        "tenants/<uuid:tenant_id>/api-keys/<uuid:key_id>/",
        api.ApiKeyDetailView.as_view(),
        name="apikey-detail",
    ),
]
