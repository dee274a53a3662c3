from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest

from tenants import secrets as secret_service
from tenants import services
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import ApiKey, Membership, Tenant, TenantSecret
from tenants.settings_schema import TenantSettingsError, secret_references


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["name", "slug", "is_active", "settings", "rate_limit_per_minute"]

    def clean_settings(self) -> dict:
        try:
            return services.tenant_settings_validate(
                tenant=self.instance if self.instance.pk else None,
                settings=self.cleaned_data.get("settings") or {},
                base=None,
            )
        except TenantSettingsError as exc:
            raise forms.ValidationError([f"{k}: {', '.join(v)}" for k, v in exc.errors.items()]) from None


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["name", "slug", "is_active", "created_at"]
    search_fields = ["name", "slug"]
    readonly_fields = ["id", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        queryset = super().get_queryset(request)
        tenant_ids = user_tenant_ids(request)
        return queryset if tenant_ids is None else queryset.filter(pk__in=tenant_ids)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["slug", "is_active", "rate_limit_per_minute"]
        return fields

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict[str, Any]:
        # The slug is read-only for owners; prepopulating a field the form lacks fails the change form.
        return super().get_prepopulated_fields(request, obj) if request.user.is_superuser else {}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def delete_model(self, request: HttpRequest, obj: Tenant) -> None:
        services.tenant_delete(tenant=obj)

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for tenant in queryset:
            services.tenant_delete(tenant=tenant)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    list_display = ["prefix", "name", "tenant", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    fields = ["tenant", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        tenant_ids = user_tenant_ids(request)
        tenant = obj.tenant if obj.tenant_id else Tenant.objects.get(pk=tenant_ids[0])  # type: ignore[index]
        issued = services.api_key_create(tenant=tenant, name=obj.name)
        obj.pk = issued.api_key.pk
        obj.prefix, obj.key_hash, obj.created_at = (
            issued.api_key.prefix,
            issued.api_key.key_hash,
            issued.api_key.created_at,
        )
        obj._state.adding = False
        messages.warning(request, f"New API key (copy it now, it is not shown again): {issued.raw_key}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for api_key in queryset:
            services.api_key_revoke(tenant=api_key.tenant, api_key_id=api_key.pk)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)


class TenantSecretForm(forms.ModelForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Write-only: the stored value is never shown. Leave empty to keep it.",
    )

    class Meta:
        model = TenantSecret
        fields = ["tenant", "name"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        try:
            secret_service.check_tenant_namespace(name)
        except secret_service.ReservedSecretName as exc:
            raise forms.ValidationError(str(exc)) from None
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.instance.pk and not data.get("value"):
            self.add_error("value", "A new secret needs a value.")
        return data


@admin.register(TenantSecret)
class TenantSecretAdmin(TenantScopedAdmin):
    form = TenantSecretForm
    list_display = ["name", "tenant", "key_id", "updated_at"]
    search_fields = ["name"]
    readonly_fields = ["key_id", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        # The platform's own webhook and function secrets are managed by those features only.
        queryset = super().get_queryset(request)
        for prefix in secret_service.INTERNAL_SECRET_PREFIXES:
            queryset = queryset.exclude(name__istartswith=prefix)
        return queryset

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A secret the tenant's settings name stays until the setting changes (the API answers 409).
        if obj is not None and obj.name in secret_references(obj.tenant.settings or {}).values():
            return False
        return super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.readonly_fields, "tenant", "name"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: TenantSecret, form: Any, change: bool) -> None:
        value = form.cleaned_data.get("value")
        tenant_ids = user_tenant_ids(request)
        tenant = obj.tenant if obj.tenant_id else Tenant.objects.get(pk=tenant_ids[0])  # type: ignore[index]
        if tenant_ids is not None and tenant.pk not in tenant_ids:
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        if value:
            saved = secret_service.tenant_secret_set(tenant=tenant, name=obj.name, value=value)
            obj.pk, obj._state.adding = saved.pk, False
