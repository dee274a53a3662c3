"""API authentication (admin key / tenant keys) and tenant scoping for API views.

Keys arrive as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, never in the URL: a request
carrying one there (``?api_key=``, ``?key=``, ...) is refused with a message saying where it goes, since
URLs end up in access logs, proxies and browser history. The global admin key (from
``ADMIN_API_KEY``) reaches everything; a tenant key reaches only its own tenant, and every other
tenant's URL answers 404, exactly as a tenant that does not exist.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import Http404
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.models import Tenant


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (tenant None) or one tenant through one of its keys."""

    is_admin: bool
    tenant: Tenant | None = None
    api_key_id: uuid.UUID | None = None

    # DRF treats request.user as a user object.
    is_authenticated = True

    def can_access(self, tenant_id: UUID) -> bool:
        return self.is_admin or (self.tenant is not None and str(self.tenant.pk) == str(tenant_id))


# Query parameters a client might put an API key in; their presence alone refuses the request.
KEY_QUERY_PARAMETERS = ("api_key", "apikey", "key", "access_token")


def key_from_request(request: Any) -> str:
    header = request.META.get("HTTP_X_API_KEY", "")
    if header:
        return header.strip()
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return ""


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Principal, str] | None:
        from tenants.services import api_key_authenticate

        key = key_from_request(request)
        if any(name in request.query_params for name in KEY_QUERY_PARAMETERS):
            raise exceptions.AuthenticationFailed(
                "API keys are not accepted in the URL (logs and browser history keep URLs): send the X-API-Key "
                "header or Authorization: Bearer, and treat a key that was sent in a URL as exposed."
            )
        if not key:
            return None
        admin_key = settings.ADMIN_API_KEY
        if admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
            return Principal(is_admin=True), key
        api_key = api_key_authenticate(raw_key=key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return Principal(is_admin=False, tenant=api_key.tenant, api_key_id=api_key.pk), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HasApiKey(BasePermission):
    message = "An API key is required (X-API-Key or Authorization: Bearer)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, Principal)


class IsAdminKey(BasePermission):
    message = "This operation needs the admin API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, Principal) and request.user.is_admin


class TenantScopedMixin:
    """For views under ``/api/tenants/<tenant_id>/...``: ``self.tenant`` is the URL's tenant, if the
    caller may see it; otherwise 404 (never 403: another tenant's existence is not revealed)."""

    tenant_url_kwarg = "tenant_id"

    @property
    def tenant(self) -> Tenant:
        cached = getattr(self, "_tenant", None)
        if cached is not None:
            return cached
        view: Any = self
        tenant_id = view.kwargs[self.tenant_url_kwarg]
        principal = view.request.user
        if not isinstance(principal, Principal) or not principal.can_access(tenant_id):
            raise Http404
        tenant: Tenant | None = principal.tenant or Tenant.objects.filter(pk=tenant_id).first()
        if tenant is None:
            raise Http404
        self._tenant = tenant
        return tenant

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        _ = self.tenant  # resolve (or 404) before any handler runs
