"""Tenant scoping in one place: every tenant-owned model derives from ``TenantOwned``.

``Model.objects.for_tenant(tenant)`` is the only way views, selectors and admin pages read
tenant-owned rows, so isolation is not re-written per view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from django.db import models

if TYPE_CHECKING:
    from tenants.models import Tenant


class TenantQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | Any) -> Self:
        tenant_id = getattr(tenant, "pk", tenant)
        return self.filter(tenant_id=tenant_id)

    def for_tenants(self, tenant_ids: Any) -> Self:
        return self.filter(tenant_id__in=tenant_ids)


class TenantOwned(models.Model):
    """Abstract base: the row carries ``tenant_id`` itself (first in its indexes and constraints)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True
