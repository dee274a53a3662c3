"""One admin mixin for every tenant-owned model: tenant staff see and change only their tenants' rows.

Superusers see everything. A staff user with Memberships sees rows of those tenants only: the
changelist, the change form (another tenant's object id answers 404 like a missing one), foreign
key choices, filters and the tenant set on new rows are all restricted to the user's tenants.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from tenants.models import Membership, Tenant
from tenants.scoping import TenantOwned


def user_tenant_ids(request: HttpRequest) -> list[Any] | None:
    """None for superusers (no restriction), else the ids of the user's tenants."""
    user: Any = request.user
    if getattr(user, "is_superuser", False):
        return None
    cached = getattr(request, "_tenant_ids", None)
    if cached is None:
        cached = list(Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True))
        request._tenant_ids = cached  # type: ignore[attr-defined]
    return cached


class TenantScopedAdmin(admin.ModelAdmin):
    tenant_field = "tenant"

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        queryset = super().get_queryset(request)
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is None:
            return queryset
        return queryset.filter(**{f"{self.tenant_field}_id__in": tenant_ids})

    def has_module_permission(self, request: HttpRequest) -> bool:
        tenant_ids = user_tenant_ids(request)
        return super().has_module_permission(request) and (tenant_ids is None or bool(tenant_ids))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is not None:
            related = db_field.related_model
            if related is Tenant:
                kwargs["queryset"] = Tenant.objects.filter(pk__in=tenant_ids)
            elif issubclass(related, TenantOwned):
                kwargs["queryset"] = related.objects.filter(tenant_id__in=tenant_ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        tenant_ids = user_tenant_ids(request)
        related = db_field.related_model
        if tenant_ids is not None and issubclass(related, TenantOwned):
            kwargs["queryset"] = related.objects.filter(tenant_id__in=tenant_ids)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = list(super().get_list_filter(request))
        if user_tenant_ids(request) is None and self.tenant_field not in filters:
            filters.insert(0, self.tenant_field)
        return filters

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> Any:
        exclude = list(super().get_exclude(request, obj) or [])
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is not None and len(tenant_ids) == 1 and self.tenant_field not in exclude:
            exclude.append(self.tenant_field)  # one tenant: set automatically, nothing to choose
        return exclude

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """The declared ``fields`` less what ``get_exclude`` leaves out of the form (the tenant, for
        staff of one tenant): a field listed but not in the form fails the page with a KeyError."""
        excluded = set(self.get_exclude(request, obj) or []) - set(self.get_readonly_fields(request, obj))
        return [field for field in super().get_fields(request, obj) if field not in excluded]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is not None:
            current = getattr(obj, f"{self.tenant_field}_id", None)
            if current is None and len(tenant_ids) == 1:
                setattr(obj, f"{self.tenant_field}_id", tenant_ids[0])
            elif current not in tenant_ids:
                from django.core.exceptions import PermissionDenied

                raise PermissionDenied
        super().save_model(request, obj, form, change)


class TenantScopedInline(admin.TabularInline):
    """Inline rows of a tenant-owned parent; FK choices restricted like TenantScopedAdmin's."""

    extra = 0

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        queryset = super().get_queryset(request)
        tenant_ids = user_tenant_ids(request)
        return queryset if tenant_ids is None else queryset.filter(tenant_id__in=tenant_ids)
