"""Admin: the audit log (read-only), webhook endpoints (secret shown once, rotation, re-enable,
replay) and deliveries with their attempts. Actions call events.services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import RequestContext, Template
from django.urls import reverse

from events import services
from events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from events.types import EventType
from tenants.admin_scoping import TenantScopedAdmin, TenantScopedInline, user_tenant_ids
from tenants.models import Tenant


@admin.register(Event)
class EventAdmin(TenantScopedAdmin):
    list_display = ["created_at", "type", "tenant", "correlation_id", "dispatch_pending", "publish_pending"]
    list_filter = ["type", "created_at", "publish_pending"]
    search_fields = ["=event_id", "=correlation_id"]
    readonly_fields = [
        "event_id",
        "tenant",
        "type",
        "payload",
        "correlation_id",
        "created_at",
        "dispatch_pending",
        "publish_pending",
        "published_at",
    ]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


_SECRET_PAGE = Template(
    """{% extends "admin/base_site.html" %}{% block content %}
<p>Copy the signing secret now: it is stored encrypted and will not be shown again.
Receivers verify requests with it (Standard Webhooks).</p>
<table>{% for label, secret in secrets %}<tr><th>{{ label }}</th><td><code>{{ secret }}</code></td></tr>{% endfor %}</table>
<p><a href="{{ back }}">Back to the webhook endpoints</a></p>{% endblock %}"""
)


def secret_page(request: HttpRequest, *, title: str, secrets: list[tuple[str, str]]) -> HttpResponse:
    """Show secrets once, in this response only (never through the messages framework, whose
    session fallback would write them to the database)."""
    context = RequestContext(
        request,
        {
            **admin.site.each_context(request),
            "title": title,
            "secrets": secrets,
            "back": reverse("admin:events_webhookendpoint_changelist"),
        },
    )
    response = HttpResponse(_SECRET_PAGE.render(context))
    response["Cache-Control"] = "no-store"
    return response


def _parse_headers(text: str) -> dict[str, str] | None:
    """'Name: value' lines → dict; '' → None (keep the current headers); '-' → {} (remove them)."""
    text = text.strip()
    if not text:
        return None
    if text == "-":
        return {}
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValidationError("Write one 'Name: value' per line.")
        headers[name.strip()] = value.strip()
    return headers


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event type.",
    )
    set_headers = forms.CharField(
        label="Custom headers",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}),
        help_text="One 'Name: value' per line, stored encrypted and never shown again. Replaces all custom "
        "headers; leave empty to keep the current ones, or enter '-' to remove them.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["tenant", "url", "description", "event_types", "is_active"]

    def clean_set_headers(self) -> dict[str, str] | None:
        return _parse_headers(self.cleaned_data.get("set_headers", ""))


class WebhookAttemptInline(TenantScopedInline):
    model = WebhookAttempt
    fields = ["started_at", "duration_ms", "status_code", "success", "error", "response_excerpt"]
    readonly_fields = ["started_at", "duration_ms", "status_code", "success", "error", "response_excerpt"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(TenantScopedAdmin):
    form = WebhookEndpointForm
    list_display = ["__str__", "tenant", "url", "is_active", "disabled_reason", "failing_since", "last_success_at"]
    list_filter = ["is_active"]
    search_fields = ["url", "description"]
    readonly_fields = [
        "header_names",
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "last_success_at",
        "last_failure_at",
        "secret_rotated_at",
        "created_at",
    ]
    actions = ["rotate_secret", "enable", "replay_dead"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # An endpoint's secrets are bound to its tenant: it cannot move to another one.
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "tenant"] if obj is not None and "tenant" not in self.get_exclude(request, obj) else fields

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is not None:
            if obj.tenant_id is None and len(tenant_ids) == 1:
                obj.tenant_id = tenant_ids[0]
            elif obj.tenant_id not in tenant_ids:
                raise PermissionDenied
        tenant = Tenant.objects.get(pk=obj.tenant_id)
        values = form.cleaned_data
        headers = values.get("set_headers")
        try:
            if not change:
                created = services.webhook_endpoint_create(
                    tenant=tenant,
                    url=values["url"],
                    event_types=values.get("event_types") or [],
                    description=values.get("description") or "",
                    headers=headers or {},
                    is_active=values.get("is_active", True),
                )
                obj.pk = created.endpoint.pk
                request._webhook_secret = created.secret  # type: ignore[attr-defined]
                return
            kwargs: dict[str, Any] = {
                "url": values["url"],
                "event_types": values.get("event_types") or [],
                "description": values.get("description") or "",
                "is_active": values.get("is_active", obj.is_active),
            }
            if headers is not None:
                kwargs["headers"] = headers
            current = WebhookEndpoint.objects.for_tenant(tenant).get(pk=obj.pk)
            services.webhook_endpoint_update(tenant=tenant, endpoint=current, **kwargs)
        except services.WebhookError as exc:
            details = "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.fields.items())
            messages.error(request, f"{exc.message} {details}".strip())

    def response_add(self, request: HttpRequest, obj: WebhookEndpoint, post_url_continue: Any = None) -> HttpResponse:
        secret = getattr(request, "_webhook_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return secret_page(request, title="Webhook endpoint created", secrets=[(obj.url, secret)])

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        services.webhook_endpoint_delete(tenant=obj.tenant, endpoint=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for endpoint in queryset.select_related("tenant"):
            services.webhook_endpoint_delete(tenant=endpoint.tenant, endpoint=endpoint)

    @admin.action(description="Rotate the signing secret (shown once)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        secrets = [
            (endpoint.url, services.webhook_secret_rotate(tenant=endpoint.tenant, endpoint=endpoint))
            for endpoint in queryset.select_related("tenant")
        ]
        return secret_page(request, title="Signing secrets rotated", secrets=secrets)

    @admin.action(description="Enable (re-enable after an automatic disable)")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        for endpoint in queryset.select_related("tenant"):
            services.webhook_endpoint_update(tenant=endpoint.tenant, endpoint=endpoint, is_active=True)
        messages.success(request, f"{queryset.count()} endpoint(s) enabled.")

    @admin.action(description="Replay dead deliveries")
    def replay_dead(self, request: HttpRequest, queryset: QuerySet) -> None:
        total = 0
        for endpoint in queryset.select_related("tenant"):
            try:
                total += services.webhook_deliveries_replay(tenant=endpoint.tenant, endpoint=endpoint)
            except services.WebhookError as exc:
                messages.error(request, f"{endpoint}: {exc.message}")
        messages.success(request, f"{total} dead deliveries replayed.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(TenantScopedAdmin):
    list_display = ["id", "tenant", "endpoint", "event", "status", "attempt_count", "next_attempt_at", "last_error"]
    list_filter = ["status"]
    search_fields = ["=event__event_id"]
    list_select_related = ["endpoint", "event"]
    readonly_fields = [
        "endpoint",
        "event",
        "tenant",
        "status",
        "attempt_count",
        "next_attempt_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "completed_at",
    ]
    inlines = [WebhookAttemptInline]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Replay (dead deliveries only)")
    def replay(self, request: HttpRequest, queryset: QuerySet) -> None:
        total = 0
        by_tenant: dict[Any, list[int]] = {}
        for tenant_id, delivery_id in queryset.filter(status="dead").values_list("tenant_id", "id"):
            by_tenant.setdefault(tenant_id, []).append(delivery_id)
        for tenant in Tenant.objects.filter(pk__in=list(by_tenant)):
            total += services.webhook_deliveries_replay(tenant=tenant, delivery_ids=by_tenant[tenant.pk])
        messages.success(request, f"{total} dead deliveries replayed (deliveries of disabled endpoints are not).")
