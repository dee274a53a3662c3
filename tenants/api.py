"""Tenants and API keys over REST. Views are thin: they validate input and call tenants.services."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from tenants import secrets as secret_service
from tenants import services
from tenants.auth import IsAdminKey, Principal, TenantScopedMixin
from tenants.models import ApiKey, Tenant, TenantSecret
from tenants.settings_schema import TenantSettingsError


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = [
            "id",
            "name",
            "slug",
            "is_active",
            "settings",
            "rate_limit_per_minute",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TenantCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=70, required=False)
    settings = serializers.JSONField(required=False)

    def validate_slug(self, value: str) -> str:
        if Tenant.objects.filter(slug=value).exists():
            raise serializers.ValidationError("a tenant with this slug already exists")
        return value


class TenantUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    settings = serializers.JSONField(required=False)
    # Admin-only fields; a tenant key sending them gets a field error.
    is_active = serializers.BooleanField(required=False)
    rate_limit_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)


class ApiKeySerializer(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "is_active", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")


def _settings_error(exc: TenantSettingsError) -> ApiError:
    details = {f"settings.{k}" if k != "settings" else k: v for k, v in exc.errors.items()}
    return ApiError(400, "validation_error", "Invalid tenant settings; see details for each field.", details)


class TenantListView(generics.GenericAPIView):
    permission_classes = [IsAdminKey]
    serializer_class = TenantSerializer

    @extend_schema(responses=TenantSerializer(many=True), summary="List tenants (admin key)")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(Tenant.objects.all().order_by("name"))
        return self.get_paginated_response(TenantSerializer(page, many=True).data)

    @extend_schema(request=TenantCreateSerializer, responses={201: TenantSerializer}, summary="Create a tenant")
    def post(self, request: Request) -> Response:
        data = TenantCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            tenant = services.tenant_create(**data.validated_data)
        except TenantSettingsError as exc:
            raise _settings_error(exc) from None
        issued = services.api_key_create(tenant=tenant, name="initial")
        body: dict[str, Any] = dict(TenantSerializer(tenant).data)
        body["api_key"] = {
            "id": str(issued.api_key.pk),
            "key": issued.raw_key,
            "prefix": issued.api_key.prefix,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class TenantDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses=TenantSerializer, summary="Read a tenant")
    def get(self, request: Request, tenant_id: UUID) -> Response:
        return Response(TenantSerializer(self.tenant).data)

    @extend_schema(request=TenantUpdateSerializer, responses=TenantSerializer, summary="Update name or settings")
    def patch(self, request: Request, tenant_id: UUID) -> Response:
        data = TenantUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        principal: Principal = request.user  # type: ignore[assignment]
        admin_only = sorted({"is_active", "rate_limit_per_minute"} & set(values))
        if admin_only and not principal.is_admin:
            raise ApiError(
                403,
                "forbidden",
                "Only the admin key may change these fields.",
                {f: ["admin only"] for f in admin_only},
            )
        try:
            tenant = services.tenant_update(tenant=self.tenant, **values)
        except TenantSettingsError as exc:
            raise _settings_error(exc) from None
        return Response(TenantSerializer(tenant).data)

    put = patch

    @extend_schema(responses={204: None}, summary="Delete a tenant and everything it owns (admin key)")
    def delete(self, request: Request, tenant_id: UUID) -> Response:
        principal: Principal = request.user  # type: ignore[assignment]
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "Only the admin key may delete a tenant.")
        services.tenant_delete(tenant=self.tenant)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = ApiKeySerializer

    def get_queryset(self) -> Any:
        return ApiKey.objects.for_tenant(self.tenant).order_by("-created_at")

    @extend_schema(responses=ApiKeySerializer(many=True), summary="List API keys (never the keys)")
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ApiKeySerializer(page, many=True).data)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeySerializer}, summary="Create an API key")
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.api_key_create(tenant=self.tenant, name=data.validated_data["name"])
        body = dict(ApiKeySerializer(issued.api_key).data)
        body["key"] = issued.raw_key  # shown this once
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses={200: ApiKeySerializer}, summary="Revoke an API key")
    def delete(self, request: Request, tenant_id: UUID, key_id: UUID) -> Response:
        try:
            api_key = services.api_key_revoke(tenant=self.tenant, api_key_id=key_id)
        except ApiKey.DoesNotExist:
            raise ApiError(404, "not_found", "No such API key.") from None
        return Response(ApiKeySerializer(api_key).data)


# --- secrets (write-only) -------------------------------------------------------------------------------


class SecretSerializer(serializers.ModelSerializer):
    class Meta:
        model = TenantSecret
        fields = ["name", "key_id", "created_at", "updated_at"]
        read_only_fields = fields


class SecretWriteSerializer(serializers.Serializer):
    value = serializers.CharField(max_length=16384, trim_whitespace=False, write_only=True)


SECRET_NAME_PATTERN = secret_service.SECRET_NAME_PATTERN


def _reserved(exc: secret_service.ReservedSecretName) -> ApiError:
    # 403 for every method on a reserved name, whether or not such a secret exists: the answer says
    # why (the prefixes are documented) and nothing about the tenant's webhooks or functions.
    return ApiError(403, "reserved_secret_name", str(exc))


class SecretListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = SecretSerializer

    @extend_schema(
        responses=SecretSerializer(many=True),
        summary="List secret names (never values); the platform's own webhook and function secrets are not listed",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        rows = TenantSecret.objects.for_tenant(self.tenant).order_by("name")
        for prefix in secret_service.INTERNAL_SECRET_PREFIXES:
            rows = rows.exclude(name__istartswith=prefix)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(SecretSerializer(page, many=True).data)


class SecretDetailView(TenantScopedMixin, APIView):
    @extend_schema(request=SecretWriteSerializer, responses=SecretSerializer, summary="Create or replace a secret")
    def put(self, request: Request, tenant_id: UUID, name: str) -> Response:
        data = SecretWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            row, created = services.tenant_secret_put(tenant=self.tenant, name=name, value=data.validated_data["value"])
        except secret_service.ReservedSecretName as exc:
            raise _reserved(exc) from None
        return Response(SecretSerializer(row).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(responses={204: None}, summary="Delete a secret (409 while a setting names it)")
    def delete(self, request: Request, tenant_id: UUID, name: str) -> Response:
        try:
            services.tenant_secret_remove(tenant=self.tenant, name=name)
        except secret_service.ReservedSecretName as exc:
            raise _reserved(exc) from None
        except secret_service.SecretNotFound:
            raise ApiError(404, "not_found", "No such secret.") from None
        except services.SecretInUse as exc:
            raise ApiError(409, "secret_in_use", str(exc), {"used_by": exc.used_by}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
