"""Tenant operations: create, update settings, delete (with files), API keys, staff users."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group, Permission
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from events.services import emit
from events.types import EventType
from tenants import secrets as secret_store
from tenants.models import ApiKey, Membership, Tenant, TenantSecret
from tenants.settings_schema import (
    TenantSettingsError,
    default_tenant_settings,
    secret_references,
    validate_tenant_settings,
)

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "mcp_"
# last_used_at is written at most this often per key, so authentication stays one SELECT.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_api_key(raw_key: str) -> str:
    """SHA-256 is right for 256-bit random keys: nothing to brute-force, and constant cost per request."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


# --- tenants ----------------------------------------------------------------------------------------


def unique_slug(name: str, slug: str | None = None) -> str:
    base = slugify(slug or name)[:70] or "tenant"
    candidate, n = base, 2
    while Tenant.objects.filter(slug=candidate).exists():
        candidate = f"{base}-{n}"
        n += 1
    return candidate


def tenant_settings_validate(*, tenant: Tenant | None, settings: Any, base: dict[str, Any] | None) -> dict[str, Any]:
    """Settings as they will be saved: the schema's strict rules, then every secret they name must be one
    of the tenant's own (a tenant being created has none yet). Raises TenantSettingsError by field path."""
    full = validate_tenant_settings(settings, base=base)
    problems = {
        path: [problem]
        for path, name in secret_references(full).items()
        if (problem := secret_store.secret_reference_problem(tenant=tenant, name=name))
    }
    if problems:
        raise TenantSettingsError(problems)
    return full


def tenant_create(*, name: str, slug: str | None = None, settings: dict[str, Any] | None = None) -> Tenant:
    full_settings = tenant_settings_validate(tenant=None, settings=settings or {}, base=default_tenant_settings())
    return Tenant.objects.create(name=name, slug=unique_slug(name, slug), settings=full_settings)


def tenant_update(
    *,
    tenant: Tenant,
    name: str | None = None,
    settings: dict[str, Any] | None = None,
    is_active: bool | None = None,
    rate_limit_per_minute: int | object | None = ...,
) -> Tenant:
    """Partial update; ``settings`` is merged over the current settings and validated as a whole."""
    changed: list[str] = []
    with transaction.atomic():
        if name is not None:
            tenant.name = name
            changed.append("name")
        if settings is not None:
            # Under the tenant's row lock, so a secret deleted meanwhile (tenant_secret_remove takes the
            # same lock) cannot leave the saved settings naming a secret that is gone.
            Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
            tenant.settings = tenant_settings_validate(tenant=tenant, settings=settings, base=tenant.settings)
            tenant.__dict__.pop("config", None)
            changed.append("settings")
        if is_active is not None:
            tenant.is_active = is_active
            changed.append("is_active")
        if rate_limit_per_minute is not ...:
            tenant.rate_limit_per_minute = rate_limit_per_minute  # type: ignore[assignment]
            changed.append("rate_limit_per_minute")
        if changed:
            tenant.save()
            emit(tenant=tenant, type=EventType.TENANT_UPDATED, payload={"fields": changed})
    return tenant


# --- the tenant's own secrets (the generic secrets API) ----------------------------------------------------


class SecretInUse(Exception):
    """The secret is named by the tenant's settings; ``used_by`` lists the setting paths."""

    def __init__(self, name: str, used_by: list[str]):
        self.used_by = used_by
        super().__init__(f"secret '{name}' is used by {', '.join(used_by)}; change that setting first")


def tenant_secret_put(*, tenant: Tenant, name: str, value: str) -> tuple[TenantSecret, bool]:
    """Create or replace one of the tenant's own secrets; (row, created). Raises ReservedSecretName."""
    secret_store.check_tenant_namespace(name)
    with transaction.atomic():
        created = not secret_store.tenant_secret_exists(tenant=tenant, name=name)
        row = secret_store.tenant_secret_set(tenant=tenant, name=name, value=value)
        emit(tenant=tenant, type=EventType.SECRET_UPDATED, payload={"name": name, "key_id": row.key_id})
    return row, created


def tenant_secret_remove(*, tenant: Tenant, name: str) -> None:
    """Delete one of the tenant's own secrets. Raises ReservedSecretName, SecretNotFound, or SecretInUse
    while a setting names it (deleting it would break that provider at its next call, not now)."""
    secret_store.check_tenant_namespace(name)
    with transaction.atomic():
        settings = Tenant.objects.select_for_update().values_list("settings", flat=True).get(pk=tenant.pk)
        used_by = sorted(f"settings.{path}" for path, ref in secret_references(settings or {}).items() if ref == name)
        if used_by:
            raise SecretInUse(name, used_by)
        if not secret_store.tenant_secret_delete(tenant=tenant, name=name):
            raise secret_store.SecretNotFound(f"tenant has no secret named '{name}'")
        emit(tenant=tenant, type=EventType.SECRET_DELETED, payload={"name": name})


def tenant_delete(*, tenant: Tenant) -> None:
    """Delete the tenant and everything it owns: rows (cascade) and stored files under ``{tenant_id}/``."""
    tenant_id = str(tenant.pk)
    with transaction.atomic():
        tenant.delete()
    delete_tenant_files(tenant_id)
    logger.info("tenant deleted", extra={"tenant_id": tenant_id})


def delete_tenant_files(tenant_id: str) -> int:
    """Remove every stored file under the tenant's folder through the storage API (local or S3)."""
    removed = 0

    def walk(prefix: str) -> None:
        nonlocal removed
        try:
            dirs, files = default_storage.listdir(prefix)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in files:
            default_storage.delete(f"{prefix}/{name}")
            removed += 1
        for sub in dirs:
            walk(f"{prefix}/{sub}")

    walk(tenant_id)
    location = getattr(default_storage, "location", None)
    if location:  # local storage: remove the now-empty folders too
        import shutil
        from pathlib import Path

        shutil.rmtree(Path(location) / tenant_id, ignore_errors=True)
    return removed


# --- API keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class IssuedKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored

    def __repr__(self) -> str:
        return f"<IssuedKey {self.api_key.prefix}…>"


def api_key_create(*, tenant: Tenant, name: str = "") -> IssuedKey:
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        api_key = ApiKey.objects.create(tenant=tenant, name=name, prefix=raw[:12], key_hash=hash_api_key(raw))
        emit(
            tenant=tenant,
            type=EventType.API_KEY_CREATED,
            payload={"api_key_id": str(api_key.pk), "prefix": api_key.prefix, "name": name},
        )
    return IssuedKey(api_key=api_key, raw_key=raw)


def api_key_revoke(*, tenant: Tenant, api_key_id: UUID | str) -> ApiKey:
    with transaction.atomic():
        api_key = ApiKey.objects.for_tenant(tenant).select_for_update().get(pk=api_key_id)
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            api_key.save(update_fields=["revoked_at"])
            emit(
                tenant=tenant,
                type=EventType.API_KEY_REVOKED,
                payload={"api_key_id": str(api_key.pk), "prefix": api_key.prefix},
            )
    return api_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key`` (its tenant active too), recording its last use."""
    if not raw_key.startswith(API_KEY_PREFIX) or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.select_related("tenant")
        .filter(key_hash=hash_api_key(raw_key), revoked_at__isnull=True, tenant__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


# --- staff ---------------------------------------------------------------------------------------------

STAFF_GROUPS = {
    Membership.Role.OWNER: "Tenant owners",
    Membership.Role.AGENT: "Tenant agents",
}
# Agents work the inbox; owners manage everything their tenant owns.
AGENT_MODELS = {("conversations", "conversation"), ("conversations", "message"), ("conversations", "contact")}
AGENT_ACTIONS = {"view", "change", "add"}


def tenant_owned_models() -> list[Any]:
    from django.apps import apps

    from tenants.scoping import TenantOwned

    return [m for m in apps.get_models() if issubclass(m, TenantOwned) and m._meta.model_name != "membership"]


def ensure_staff_groups() -> dict[str, Group]:
    """Create/refresh the two staff groups with permissions on every tenant-owned model."""
    from django.contrib.contenttypes.models import ContentType

    groups: dict[str, Group] = {}
    models = tenant_owned_models()
    for role, group_name in STAFF_GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        perms: list[Permission] = []
        for model in models:
            ct = ContentType.objects.get_for_model(model)
            key = (model._meta.app_label, model._meta.model_name)
            for perm in Permission.objects.filter(content_type=ct):
                action = perm.codename.split("_", 1)[0]
                if role == Membership.Role.OWNER or (key in AGENT_MODELS and action in AGENT_ACTIONS):
                    perms.append(perm)
        if role == Membership.Role.OWNER:
            tenant_ct = ContentType.objects.get_for_model(Tenant)
            perms += list(
                Permission.objects.filter(content_type=tenant_ct, codename__in=["view_tenant", "change_tenant"])
            )
        group.permissions.set(perms)
        groups[role] = group
    return groups


def staff_user_create(
    *, tenant: Tenant, username: str, role: str, password: str | None = None, email: str = ""
) -> tuple[AbstractUser, str | None]:
    """Create (or attach) a staff user to the tenant. Returns the user and a generated password, if any."""
    user_model = get_user_model()
    generated = None
    with transaction.atomic():
        user = user_model.objects.filter(username=username).first()
        if user is None:
            generated = None if password else secrets.token_urlsafe(12)
            user = user_model.objects.create_user(username=username, email=email, password=password or generated)
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
        groups = ensure_staff_groups()
        user.groups.add(groups[role])
    return user, generated
