"""Tenants and API keys over REST. Views are thin: they validate input and call tenants.services."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from config.openapi import admin_only, error_response
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
    slug = serializers.SlugField(max_length=70, required=False, help_text="URL name; derived from name if omitted")
    settings = serializers.JSONField(
        required=False,
        help_text="Assistant settings (brandName, tone, locale, ragConfig, llm...): docs/conversations.md",
    )

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

    @extend_schema(
        responses=TenantSerializer(many=True),
        summary="List tenants (admin key)",
        description="Every tenant of the platform, by name. Only the admin key may list tenants; a tenant key "
        "answers 403.",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(Tenant.objects.all().order_by("name"))
        return self.get_paginated_response(TenantSerializer(page, many=True).data)

    @extend_schema(
        request=TenantCreateSerializer,
        responses={
            201: inline_serializer(
                "TenantCreated",
                {
                    **TenantSerializer().get_fields(),
                    "api_key": inline_serializer(
                        "IssuedApiKey",
                        {
                            "id": serializers.UUIDField(),
                            "key": serializers.CharField(help_text="the tenant's first API key, shown this once"),
                            "prefix": serializers.CharField(),
                        },
                    ),
                },
            )
        },
        summary="Create a tenant",
        description="Creates a tenant (admin key only) and its first API key, returned in `api_key.key` this "
        "once: store it, only its prefix is shown afterwards. Give the tenant to its owner with that key; every "
        "other call of the API can be made with it.",
        examples=[
            OpenApiExample(
                "A shop",
                request_only=True,
                value={
                    "name": "Acme Shop",
                    "settings": {"brandName": "Acme Shop", "tone": "friendly", "locale": ["en", "fr"]},
                },
            )
        ],
    )
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
    @extend_schema(
        responses=TenantSerializer,
        summary="Read a tenant",
        description="The tenant's name, settings and rate limit. A tenant key reads its own tenant only.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        return Response(TenantSerializer(self.tenant).data)

    @extend_schema(
        request=TenantUpdateSerializer,
        responses={
            200: TenantSerializer,
            403: error_response(403, "`is_active` and `rate_limit_per_minute` need the admin key."),
        },
        summary="Update name or settings",
        description="Changes the name or the assistant settings (validated; `details` names each wrong key). "
        "`is_active` and `rate_limit_per_minute` are the admin key's: a tenant key sending them gets 403.",
    )
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

    @extend_schema(
        responses={204: None},
        summary="Delete a tenant and everything it owns (admin key)",
        description="Deletes the tenant with its channels, documents, conversations, events and keys. Not "
        "reversible. Only the admin key may do it.",
    )
    @admin_only
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

    @extend_schema(
        responses=ApiKeySerializer(many=True),
        summary="List API keys (never the keys)",
        description="The tenant's keys, newest first, with their prefix (the start of the key, to recognise it), "
        "when each was last used and whether it is revoked. The keys themselves are never shown again.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ApiKeySerializer(page, many=True).data)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={
            201: inline_serializer(
                "ApiKeyCreated",
                {**ApiKeySerializer().get_fields(), "key": serializers.CharField(help_text="shown this once")},
            )
        },
        summary="Create an API key",
        description="Issues a new key for the tenant, e.g. one per integration so each can be revoked alone. "
        "The answer carries the key in `key` this once.",
        examples=[OpenApiExample("Per integration", value={"name": "crm-sync"}, request_only=True)],
    )
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.api_key_create(tenant=self.tenant, name=data.validated_data["name"])
        body = dict(ApiKeySerializer(issued.api_key).data)
        body["key"] = issued.raw_key  # shown this once
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(TenantScopedMixin, APIView):
    @extend_schema(
        responses={200: ApiKeySerializer},
        summary="Revoke an API key",
        description="The key stops working at once (401 on its next request); the row stays, with `revoked_at`.",
    )
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
        description="Secrets are values the tenant's settings and functions refer to by name (an LLM provider "
        "key, a CRM token). They are stored encrypted and never shown again; this lists their names only.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        rows = TenantSecret.objects.for_tenant(self.tenant).order_by("name")
        for prefix in secret_service.INTERNAL_SECRET_PREFIXES:
            rows = rows.exclude(name__istartswith=prefix)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(SecretSerializer(page, many=True).data)


class SecretDetailView(TenantScopedMixin, APIView):
    @extend_schema(
        request=SecretWriteSerializer,
        responses={
            200: SecretSerializer,
            201: SecretSerializer,
            403: error_response(403, "The name is reserved for the platform's own secrets.", "reserved_secret_name"),
        },
        summary="Create or replace a secret",
        description="Stores `value` encrypted under this name: 201 when new, 200 when replaced. The value is "
        "never returned. Names starting with the platform's reserved prefixes answer 403.",
        examples=[OpenApiExample("A CRM token", value={"value": "crm_live_5f2..."}, request_only=True)],
    )
    def put(self, request: Request, tenant_id: UUID, name: str) -> Response:
        data = SecretWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            row, created = services.tenant_secret_put(tenant=self.tenant, name=name, value=data.validated_data["value"])
        except secret_service.ReservedSecretName as exc:
            raise _reserved(exc) from None
        return Response(SecretSerializer(row).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        responses={
            204: None,
            403: error_response(403, "The name is reserved for the platform's own secrets.", "reserved_secret_name"),
            409: error_response(409, "A setting or function still names this secret.", "secret_in_use"),
        },
        summary="Delete a secret (409 while a setting names it)",
        description="Deletes the secret. While a tenant setting or a function refers to it, the answer is 409 "
        "`secret_in_use` with `details.used_by`: change those first.",
    )
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
