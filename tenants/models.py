from __future__ import annotations

import uuid
from functools import cached_property

from django.conf import settings
from django.db import models

from tenants.scoping import TenantOwned
from tenants.settings_schema import TenantSettings, default_tenant_settings, parse_tenant_settings


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    is_active = models.BooleanField(default=True)
    settings = models.JSONField(default=default_tenant_settings)
    # Requests per minute for this tenant's API keys; null = the deployment default.
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @cached_property
    def config(self) -> TenantSettings:
        """Typed view of ``settings`` (validated when written)."""
        return parse_tenant_settings(self.settings)


class ApiKey(TenantOwned):
    """A tenant API key. Only its SHA-256 is stored, with a short visible prefix to recognise it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120, blank=True, default="")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="apikey_tenant_created")]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Membership(TenantOwned):
    """A staff user's access to one tenant in the admin."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        AGENT = "agent", "Agent"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.AGENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_tenant_user")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant_id} ({self.role})"


class TenantSecret(TenantOwned):
    """An AES-256-GCM encrypted credential of a tenant (LLM keys, function auth headers, ...).

    Only base64 ciphertext, nonce and tag are stored, with the id of the key that encrypted them.
    The associated data binds the ciphertext to (tenant id, name): copied to another row it fails.
    Read the plaintext only through ``tenants.secrets.with_tenant_secret``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120)
    ciphertext = models.TextField()
    iv = models.CharField(max_length=32)
    tag = models.CharField(max_length=32)
    key_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="tenantsecret_unique_name")]
        indexes = [models.Index(fields=["key_id"], name="tenantsecret_key_id")]

    def __str__(self) -> str:
        return f"secret {self.name}"

    def __repr__(self) -> str:
        return f"<TenantSecret {self.name} key_id={self.key_id}>"
