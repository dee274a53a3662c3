"""Admin: channels with write-only credentials, inbound events (read-only), unrouted webhooks
(superusers only). Actions call channels_app.services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.http import HttpRequest
from django.utils.html import format_html

from channels_app import services, webchat
from channels_app.models import Channel, InboundEvent, UnroutedWebhook, new_widget_key
from channels_app.secrets import with_channel_secret
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import Tenant


class ChannelForm(forms.ModelForm):
    """Credentials are write-only: the fields always render empty; an empty field keeps the stored value."""

    app_secret = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )
    access_token = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )
    verify_token = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )

    class Meta:
        model = Channel
        fields = ["tenant", "type", "name", "is_active", "external_id", "config"]

    request: HttpRequest  # set by ChannelAdmin.get_form
    claim: services.ExternalIdClaim | None = None

    def credentials(self) -> dict[str, str]:
        return {name: self.cleaned_data.get(name) or "" for name in services.CREDENTIAL_NAMES}

    def clean(self) -> dict[str, Any]:
        """Tenant staff claim a WhatsApp/Messenger id as the API does (Meta must confirm the token);
        superusers (the operator, e.g. settling a "contact support" case) assign ids directly."""
        data = super().clean() or {}
        channel_type, external_id = data.get("type") or self.instance.type, data.get("external_id") or ""
        tenant_ids = user_tenant_ids(self.request)
        if (
            tenant_ids is None
            or channel_type not in services.META_PLATFORMS
            or not external_id
            or external_id == self.instance.external_id
        ):
            return data
        tenant = data.get("tenant") or (self.instance.tenant if self.instance.tenant_id else None)
        if tenant is None and len(tenant_ids) == 1:
            tenant = Tenant.objects.get(pk=tenant_ids[0])
        if tenant is None:
            return data  # the tenant field reports it missing
        token = data.get("access_token") or (
            with_channel_secret(
                channel=self.instance, fn=lambda values: values.get("access_token", ""), missing_ok=True
            )
            if self.instance.pk
            else ""
        )
        try:
            self.claim = services.external_id_claim_verify(
                tenant=tenant,
                type=channel_type,
                external_id=external_id,
                access_token=token or "",
                exclude_pk=self.instance.pk,
            )
        except services.ChannelError as exc:
            self.add_error("access_token" if exc.field == "credentials.access_token" else "external_id", str(exc))
        return data


@admin.register(Channel)
class ChannelAdmin(TenantScopedAdmin):
    form = ChannelForm
    list_display = ["name", "type", "tenant", "external_id", "is_active", "sending_status"]
    list_filter = ["type", "is_active"]
    search_fields = ["name", "external_id"]
    readonly_fields = ["id", "sending_disabled_reason", "credentials_set", "created_at", "updated_at"]
    actions = ["enable_sending"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        base = [
            f
            for f in ["tenant", "type", "name", "is_active", "external_id", "config"]
            if f in self._form_fields(request, obj)
        ]
        return [
            (None, {"fields": base}),
            ("Credentials (write-only)", {"fields": ["app_secret", "access_token", "verify_token", "credentials_set"]}),
            ("Status", {"fields": ["sending_disabled_reason", "id", "created_at", "updated_at"]}),
        ]

    def _form_fields(self, request: HttpRequest, obj: Any) -> list[str]:
        excluded = set(self.get_exclude(request, obj) or [])
        return [f for f in ChannelForm.Meta.fields if f not in excluded]

    @admin.display(description="Sending")
    def sending_status(self, obj: Channel) -> str:
        if obj.sending_disabled_reason:
            return format_html('<span style="color:#b00">disabled: {}</span>', obj.sending_disabled_reason[:120])
        return "ok"

    @admin.display(description="Credentials set")
    def credentials_set(self, obj: Channel) -> str:
        if not obj.pk:
            return "-"
        return ", ".join(services.channel_credential_names(channel=obj)) or "none"

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        form.request = request  # type: ignore[attr-defined]  # a class made for this call (modelform_factory)
        return form

    def save_model(self, request: HttpRequest, obj: Channel, form: Any, change: bool) -> None:
        if obj.type == Channel.Type.WEBCHAT and not obj.external_id:
            obj.external_id = new_widget_key()  # the public key the embed snippet carries
        with transaction.atomic():
            if form.claim is not None:
                services.external_id_claim_apply(form.claim)
            super().save_model(request, obj, form, change)
        services.clear_route_cache()
        if obj.type == Channel.Type.WEBCHAT and not obj.is_active:
            transaction.on_commit(lambda: webchat.close_channel_sockets(channel_id=obj.pk))
        credentials = {k: v for k, v in form.credentials().items() if v}
        if credentials:
            services.channel_set_credentials(channel=obj, credentials=credentials)
            messages.info(request, f"Credentials updated: {', '.join(sorted(credentials))}.")

    @admin.action(description="Re-enable sending (after fixing the credentials)")
    def enable_sending(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for channel in queryset:
            services.channel_enable_sending(channel=channel)
        self.message_user(request, f"Sending re-enabled on {queryset.count()} channel(s).")


@admin.register(InboundEvent)
class InboundEventAdmin(TenantScopedAdmin):
    list_display = ["id", "received_at", "kind", "channel", "sender_external_id", "status", "attempts"]
    list_filter = ["kind", "status", "received_at"]
    search_fields = ["=dedupe_key", "=sender_external_id", "=correlation_id"]
    date_hierarchy = "received_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in InboundEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UnroutedWebhook)
class UnroutedWebhookAdmin(admin.ModelAdmin):
    """Payloads no channel took (unknown number/page, channel without app secret): superusers only,
    since they may belong to any tenant."""

    list_display = ["id", "received_at", "platform", "reason", "external_ids"]
    list_filter = ["platform", "reason"]
    date_hierarchy = "received_at"
    readonly_fields = ["platform", "reason", "external_ids", "body", "headers", "received_at"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)
