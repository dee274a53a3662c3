from django.urls import path, re_path

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
    path("tenants/<uuid:tenant_id>/secrets/", api.SecretListView.as_view(), name="secret-list"),
    re_path(
        rf"^tenants/(?P<tenant_id>[0-9a-f-]{{36}})/secrets/(?P<name>{api.SECRET_NAME_PATTERN})/?$",
        api.SecretDetailView.as_view(),
        name="secret-detail",
    ),
]
