"""What the OpenAPI schema (/api/schema/, /api/docs/) says beyond the views' own annotations.

- the security schemes: a tenant API key or the admin key, as ``Authorization: Bearer`` or ``X-API-Key``;
- the error envelope every error answers (config/errors.py) as one component, ``Error``, and the error
  statuses each operation can answer (401 without a key, 404 under a tenant's URL, 400/413/415 with a
  body, 429 when throttled, 403 for admin-only views), added to what the view declares itself;
- one tag per area, from the view's module;
- GET /api/health and /api/health/live, plain Django views the generator cannot see.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import permissions, serializers

# --- the error envelope --------------------------------------------------------------------------------


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(
        help_text="Stable, machine-readable reason, e.g. `validation_error`, `not_found`, `rate_limited`."
    )
    message = serializers.CharField(help_text="A sentence for a human; wording may change.")
    details = serializers.JSONField(
        help_text="Structured context: for `validation_error` an object of field name to a list of problems; "
        'for `rate_limited` `{"retry_after": seconds}`; `{}` when there is nothing to add.'
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


ERROR_COMPONENT = "Error"

# What each status means across the API (an operation's own extend_schema may say more).
ERROR_DESCRIPTIONS = {
    400: "Invalid request (`validation_error`: `details` names each field and its problems).",
    401: "No API key, or an invalid or revoked one (`not_authenticated`, `authentication_failed`); also a key "
    "sent in the URL.",
    403: "The key may not do this (`forbidden`): this operation needs the admin key.",
    404: "No such object for this tenant (`not_found`); another tenant's objects answer 404 too, never 403. "
    "Also a `page` past the last one.",
    409: "Conflict with the object's current state (`conflict`).",
    413: "The request body is over the size limit (`payload_too_large`, `details.limit` in bytes).",
    415: "Unsupported content type (`unsupported_media_type`): send JSON, or multipart where documented.",
    429: "Too many requests for this tenant (`rate_limited`, `details.retry_after` in seconds; `Retry-After` header).",
}

ERROR_EXAMPLES = {
    400: {"code": "validation_error", "message": "The request is invalid; see details for each field.",
          "details": {"name": ["This field is required."]}},
    401: {"code": "not_authenticated", "message": "Authentication credentials were not provided.", "details": {}},
    403: {"code": "forbidden", "message": "This operation needs the admin API key.", "details": {}},
    404: {"code": "not_found", "message": "Not found.", "details": {}},
    409: {"code": "conflict", "message": "The object's state does not allow this.", "details": {}},
    413: {"code": "payload_too_large", "message": "The request body is over 1048576 bytes.",
          "details": {"limit": 1048576}},
    415: {"code": "unsupported_media_type", "message": 'Unsupported media type "text/plain" in request.',
          "details": {}},
    429: {"code": "rate_limited", "message": "Too many requests; retry in 12 s.", "details": {"retry_after": 12}},
}  # fmt: skip


def error_response(status_code: int, description: str = "", code: str = "") -> OpenApiResponse:
    """An error answer in the envelope, e.g. ``409: error_response(409, "The conversation ...", "invalid_transition")``."""
    example: dict[str, Any] = dict(ERROR_EXAMPLES.get(status_code) or {"message": description, "details": {}})
    if code:
        example = {"code": code, "message": description or example["message"], "details": {}}
    name = str(example.get("code") or "error")
    return OpenApiResponse(
        ErrorSerializer,
        description=description or ERROR_DESCRIPTIONS.get(status_code, ""),
        examples=[OpenApiExample(name, value={"error": {"code": name, **example}}, status_codes=[status_code])],
    )


# --- security schemes ----------------------------------------------------------------------------------


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """tenants.auth.ApiKeyAuthentication: one key, in either header; the admin key is a key too."""

    target_class = "tenants.auth.ApiKeyAuthentication"
    name = ["TenantApiKey", "AdminApiKey", "ApiKeyHeader"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        if _admin_only(auto_schema):
            return [{"AdminApiKey": []}, {"ApiKeyHeader": []}]
        return [{"TenantApiKey": []}, {"AdminApiKey": []}, {"ApiKeyHeader": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": "The tenant's API key (`POST /api/tenants/` returns the first one; more under "
                "`/api-keys/`): `Authorization: Bearer <key>`. It reaches its own tenant only; any other "
                "tenant's URL answers 404.",
            },
            {
                "type": "http",
                "scheme": "bearer",
                "description": "The platform's admin key (the `ADMIN_API_KEY` setting): `Authorization: Bearer "
                "<key>`. Reaches every tenant; needed to list, create and delete tenants.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "Either key in the `X-API-Key` header instead of `Authorization`. Never put a key "
                "in the URL: such a request is refused with 401.",
            },
        ]


def _admin_only(auto_schema: Any) -> bool:
    from tenants.auth import IsAdminKey

    if any(isinstance(p, IsAdminKey) for p in auto_schema.view.get_permissions()):
        return True
    return bool(getattr(getattr(auto_schema.view, auto_schema.method.lower(), None), "admin_only", False))


def admin_only(method: Any) -> Any:
    """Marks a view method that refuses tenant keys itself (403), for the schema's security and 403."""
    method.admin_only = True
    return method


# --- tags and default error responses ------------------------------------------------------------------

TAGS_BY_MODULE = {
    "tenants.api": "Tenants",
    "channels_app.api": "Channels",
    "knowledge.api": "Knowledge",
    "conversations.api": "Conversations",
    "events.api": "Events & webhooks",
    "channels_app.webchat_api": "Web chat",
}
HEALTH_TAG = "Health"


class AutoSchema(openapi.AutoSchema):
    def get_tags(self) -> list[str]:
        tag = TAGS_BY_MODULE.get(type(self.view).__module__)
        # A view in a module not listed keeps drf-spectacular's path tag ("api"): the schema test refuses it.
        return [tag] if tag else super().get_tags()

    def _error_statuses(self) -> list[int]:
        view = self.view
        public = any(isinstance(p, permissions.AllowAny) for p in view.get_permissions())
        has_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        statuses = []
        if has_body:  # a GET whose query is validated declares its 400 itself
            statuses.append(400)
        if not public:
            statuses.append(401)
            if _admin_only(self):
                statuses.append(403)
        if "{" in self.path or self._is_list_view():
            statuses.append(404)
        if has_body:
            statuses += [413, 415]
        if view.get_throttles():
            statuses.append(429)
        return statuses

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status_code in self._error_statuses():
            if str(status_code) not in responses:
                responses[str(status_code)] = self._get_response_for_code(
                    error_response(status_code), str(status_code), direction=direction
                )
        return dict(sorted(responses.items()))


# --- GET /api/health -----------------------------------------------------------------------------------


def add_health_operation(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    check = {
        "type": "object",
        "required": ["status", "latency_ms"],
        "properties": {
            "status": {"type": "string", "enum": ["up", "down"]},
            "latency_ms": {"type": "number"},
            "error": {"type": "string", "description": "Why the check failed (only when down)."},
        },
        "additionalProperties": True,
        "description": "One dependency: up or down, and how long the check took.",
    }
    body = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
            "checks": {"type": "object", "additionalProperties": check},
        },
    }
    example = {
        "status": "degraded",
        "checks": {
            "postgres": {"status": "up", "latency_ms": 0.41},
            "redis": {"status": "down", "latency_ms": 2.3, "error": "ConnectionError: Connection refused"},
        },
    }
    result["paths"]["/api/health"] = {
        "get": {
            "operationId": "health_retrieve",
            "summary": "Health of the platform and its dependencies",
            "description": "PostgreSQL is required; Redis, RabbitMQ and the event outbox degrade the answer "
            "without failing it. `healthy` or `degraded` answer 200, `unhealthy` 503: point a load balancer's "
            "or Kubernetes' probe here. No API key needed; nothing tenant-specific is shown.",
            "tags": [HEALTH_TAG],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "`healthy`, or `degraded` when an optional dependency fails.",
                    "content": {"application/json": {"schema": body, "example": example}},
                },
                "503": {
                    "description": "`unhealthy`: a required dependency (PostgreSQL) fails.",
                    "content": {"application/json": {"schema": body}},
                },
            },
        }
    }
    result["paths"]["/api/health/live"] = {
        "get": {
            "operationId": "health_live_retrieve",
            "summary": "Liveness of this server process",
            "description": "Answers 200 while this process still serves HTTP; checks no dependency, so a "
            "database outage does not get every server restarted. For Kubernetes' liveness probe "
            "(readiness: `/api/health`).",
            "tags": [HEALTH_TAG],
            "security": [{}],
            "responses": {
                "200": {
                    "description": "The process answers.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string", "enum": ["alive"]}},
                            },
                            "example": {"status": "alive"},
                        }
                    },
                },
            },
        }
    }
    return result
