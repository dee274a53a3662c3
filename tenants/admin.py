from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.http import HttpRequest

from events.services import emit
from events.types import EventType
from tenants import secrets as secret_service
from tenants import services
from tenants.admin_forms import SETTING_FIELDS, SETTINGS_FIELDSETS, TenantSettingsFormMixin
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import ApiKey, Membership, Tenant, TenantSecret
from tenants.settings_schema import secret_references

SETTINGS_FORM_FIELDS = {spec.name for spec in SETTING_FIELDS}


class TenantForm(TenantSettingsFormMixin, forms.ModelForm):
    """The tenant with its settings as fields (tenants.admin_forms); ``settings_json`` is added for
    superusers only (TenantAdmin.get_form)."""

    class Meta:
        model = Tenant
        fields = ["name", "slug", "is_active", "rate_limit_per_minute"]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.setup_settings_fields()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        self.clean_settings_fields(self.add_error)
        if self.validated_settings is not None:
            # Not a model field of this form: construct_instance leaves it as set here.
            self.instance.settings = self.validated_settings
            self.instance.__dict__.pop("config", None)
        return data


class SuperuserTenantForm(TenantForm):
    settings_json = forms.JSONField(
        label="Settings as JSON",
        required=False,
        widget=forms.Textarea(attrs={"rows": 18, "cols": 90, "style": "font-family: monospace"}),
        help_text="Everything the form above shows, as stored. Change either the form or this, not both; "
        "validated by the same rules.",
    )


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["name", "slug", "is_active", "created_at"]
    search_fields = ["name", "slug"]
    readonly_fields = ["id", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ["name"]}

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if request.user.is_superuser:
            kwargs["form"] = SuperuserTenantForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        tenant = ["name", "slug", "is_active", "rate_limit_per_minute"]
        if obj is not None:
            tenant += ["id", "created_at", "updated_at"]
        fieldsets: list[Any] = [(None, {"fields": tenant}), *SETTINGS_FIELDSETS]
        if request.user.is_superuser:
            fieldsets.append(("Advanced: settings as JSON", {"fields": ["settings_json"], "classes": ["collapse"]}))
        return fieldsets

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        # As the API's tenant_update: under the row lock (a secret removed meanwhile waits for it), and
        # tenant.updated tells the subscribers (a switched-off tenant's web chat sockets close).
        with transaction.atomic():
            if change:
                Tenant.objects.select_for_update().filter(pk=obj.pk).first()
            super().save_model(request, obj, form, change)
            if change:
                settings_fields = SETTINGS_FORM_FIELDS | {"settings_json"}
                fields = sorted({"settings" if name in settings_fields else name for name in form.changed_data})
                if fields:
                    emit(tenant=obj, type=EventType.TENANT_UPDATED, payload={"fields": fields})

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
