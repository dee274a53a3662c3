"""First-start bootstrap for `make run`: an admin user and a demo tenant, created once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction

from channels_app.demo import ensure_demo_content
from tenants import services
from tenants.models import Tenant

DEMO_SLUG = "demo"
ADMIN_USERNAME = "admin"


@dataclass
class BootstrapResult:
    created_admin_password: str | None = None
    demo_tenant: Tenant | None = None
    created_demo_api_key: str | None = None
    notes: list[str] = field(default_factory=list)


def ensure_demo() -> BootstrapResult:
    """Idempotent: creates what is missing, returns the secrets it created (to be printed once)."""
    result = BootstrapResult()
    user_model = get_user_model()
    with transaction.atomic():
        if not user_model.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            user_model.objects.create_superuser(username=ADMIN_USERNAME, email="", password=password)
            result.created_admin_password = password
        tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
        if tenant is None:
            tenant = services.tenant_create(
                name="Demo Company",
                slug=DEMO_SLUG,
                settings={
                    "brandName": "Demo Company",
                    "humanHandoffKeywords": ["human", "agent", "operator"],
                },
            )
            result.created_demo_api_key = services.api_key_create(tenant=tenant, name="demo").raw_key
        result.demo_tenant = tenant
    result.notes += ensure_demo_content(tenant=tenant)
    return result
