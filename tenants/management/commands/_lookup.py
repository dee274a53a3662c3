"""Find a tenant by id or slug for management commands."""

import contextlib
import uuid

from django.core.management.base import CommandError

from tenants.models import Tenant


def find_tenant(value: str) -> Tenant:
    query = Tenant.objects.filter(slug=value)
    with contextlib.suppress(ValueError):
        query = query | Tenant.objects.filter(pk=uuid.UUID(value))
    tenant = query.first()
    if tenant is None:
        raise CommandError(f"no tenant with id or slug '{value}'")
    return tenant
