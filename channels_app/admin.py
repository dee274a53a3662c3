"""Admin: channels with write-only credentials, inbound events (read-only), unrouted webhooks
(superusers only). Actions call channels_app.services."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.validators import RegexValidator
from django.db import models, transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html

from channels_app import services, webchat
from channels_app.adapters.base import SendError
from channels_app.models import (
    Campaign,
    Channel,
    Consent,
    InboundEvent,
    MessageTemplate,
    UnroutedWebhook,
    new_widget_key,
)
from channels_app.secrets import with_channel_secret
from channels_app.services import campaigns, templates
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import Tenant

WEBCHAT_DEFAULT_COLORS = {"accent_color": "#2456d6", "accent_text_color": "#ffffff"}  # static/webchat/widget.css
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

# The form fields of each channel type: only these are shown, and only their values are saved.
TYPE_FIELDS: dict[str, list[str]] = {
    Channel.Type.WHATSAPP: ["external_id", "display_phone_number", "waba_id"],
    Channel.Type.MESSENGER: ["external_id"],
    Channel.Type.WEBCHAT: [
        "allowed_origins",
        "widget_title",
        "greeting",
        "accent_color",
        "accent_text_color",
        "demo_page",
    ],
}
CONFIG_FIELDS = {  # form field -> key in Channel.config
    "display_phone_number": "display_phone_number",
    "waba_id": "waba_id",
    "allowed_origins": "allowed_origins",
    "widget_title": "title",
    "greeting": "greeting",
    "accent_color": "accent_color",
    "accent_text_color": "accent_text_color",
    "demo_page": "demo_page",
}
EXTERNAL_ID_LABELS: dict[str, tuple[str, str]] = {
    Channel.Type.WHATSAPP: ("Phone number ID", "The WhatsApp phone_number_id (not the phone number itself)."),
    Channel.Type.MESSENGER: ("Page ID", "The Facebook page id."),
}


class ChannelForm(forms.ModelForm):
    """One form for the three types; ``__init__`` keeps the fields of the channel's type only.
    Credentials are write-only: the fields always render empty; an empty field keeps the stored value.
    Keys of ``config`` the form does not show are kept."""

    app_secret = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )
    access_token = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )
    verify_token = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep."
    )
    display_phone_number = forms.CharField(
        required=False, max_length=32, help_text="Shown to staff only, e.g. +1 555 000 1111."
    )
    waba_id = forms.RegexField(
        label="WhatsApp Business Account ID",
        regex=r"^[0-9]{1,32}$",
        required=False,
        help_text="The WABA the number belongs to (WhatsApp Manager): its message templates are synced from it.",
    )
    allowed_origins = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "https://www.example.com"}),
        help_text="The sites that may show this chat, one per line: scheme://host[:port], e.g. "
        "https://www.example.com. “*” allows any site (rarely wanted). With none, every session is refused.",
    )
    widget_title = forms.CharField(
        label="Title", required=False, max_length=80, help_text="The chat window's header; empty: the tenant's name."
    )
    greeting = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Shown to a visitor who has no messages yet; empty: none.",
    )
    accent_color = forms.CharField(
        label="Accent colour",
        initial=WEBCHAT_DEFAULT_COLORS["accent_color"],
        widget=forms.TextInput(attrs={"type": "color"}),
        help_text="Launcher, header, send button and the visitor's bubbles (applied by the embed snippet).",
    )
    accent_text_color = forms.CharField(
        label="Text on accent",
        initial=WEBCHAT_DEFAULT_COLORS["accent_text_color"],
        widget=forms.TextInput(attrs={"type": "color"}),
        help_text="Text on the accent colour.",
    )
    demo_page = forms.BooleanField(
        label="Demo page", required=False, help_text="Show this chat on the public page /demo/<tenant slug>/."
    )

    class Meta:
        model = Channel
        fields = ["tenant", "type", "name", "is_active", "external_id"]

    request: HttpRequest  # set by ChannelAdmin.get_form
    channel_type: str  # set by ChannelAdmin.get_form
    claim: services.ExternalIdClaim | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        kept = set(TYPE_FIELDS.get(self.channel_type, []))
        if self.channel_type in services.META_PLATFORMS:
            kept |= set(services.CREDENTIAL_NAMES)
        for name in [*CONFIG_FIELDS, *services.CREDENTIAL_NAMES, "external_id"]:
            if name not in kept:
                self.fields.pop(name, None)
        if "type" in self.fields:
            self.fields["type"].widget = forms.HiddenInput()
            self.initial["type"] = self.channel_type
        if "external_id" in self.fields and self.channel_type in EXTERNAL_ID_LABELS:
            field = self.fields["external_id"]
            field.label, field.help_text = EXTERNAL_ID_LABELS[self.channel_type]
            field.required = True  # as the API: Meta routes this channel's traffic by it
            field.validators.append(RegexValidator(r"^[0-9]{1,32}$", "Meta's ids are digits only."))
        config = self.instance.config if isinstance(self.instance.config, dict) else {}
        for name, key in CONFIG_FIELDS.items():
            if name in self.fields and key in config:
                value = config[key]
                self.initial[name] = "\n".join(value) if isinstance(value, list) else value

    def credentials(self) -> dict[str, str]:
        return {name: self.cleaned_data.get(name) or "" for name in services.CREDENTIAL_NAMES}

    def clean_type(self) -> str:
        return self.channel_type  # chosen before the form (the add page's type choice); never changed

    def clean_allowed_origins(self) -> list[str]:
        origins: list[str] = []
        for line in str(self.cleaned_data.get("allowed_origins") or "").splitlines():
            if not line.strip():
                continue
            origin = webchat.normalize_origin(line)
            if not origin:
                raise forms.ValidationError(
                    f"“{line.strip()[:200]}” is not an origin: write scheme://host[:port], e.g. https://www.example.com"
                )
            if origin not in origins:
                origins.append(origin)
        return origins

    def _clean_color(self, name: str) -> str:
        value = str(self.cleaned_data.get(name) or "").strip()
        if not _HEX_COLOR.match(value):
            raise forms.ValidationError("A colour as #rrggbb, e.g. #2456d6.")
        return value.lower()

    def clean_accent_color(self) -> str:
        return self._clean_color("accent_color")

    def clean_accent_text_color(self) -> str:
        return self._clean_color("accent_text_color")

    def clean(self) -> dict[str, Any]:
        """Tenant staff claim a WhatsApp/Messenger id as the API does (Meta must confirm the token);
        superusers (the operator, e.g. settling a "contact support" case) assign ids directly."""
        data = super().clean() or {}
        self._set_type_and_config()
        channel_type, external_id = self.channel_type, data.get("external_id") or ""
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

    def _set_type_and_config(self) -> None:
        """The type chosen before the form and the type's fields into ``config`` (other keys kept).
        Neither is a model field of this form, so construct_instance leaves them as set here."""
        self.instance.type = self.channel_type
        config = dict(self.instance.config) if isinstance(self.instance.config, dict) else {}
        for name, key in CONFIG_FIELDS.items():
            if name in self.fields and name in self.cleaned_data:
                value = self.cleaned_data[name]
                if value == "":
                    config.pop(key, None)  # an empty text field: the widget's default
                else:
                    config[key] = value
        self.instance.config = config


def embed_snippet(*, channel: Channel, base_url: str) -> str:
    """The lines a site pastes before </body> (docs/webchat.md); the colours, when not the widget's own,
    as CSS variables of static/webchat/widget.css."""
    config = channel.config or {}
    lines = [f'<link rel="stylesheet" href="{base_url}{static("webchat/widget.css")}">']
    accent = config.get("accent_color") or WEBCHAT_DEFAULT_COLORS["accent_color"]
    accent_text = config.get("accent_text_color") or WEBCHAT_DEFAULT_COLORS["accent_text_color"]
    if (accent, accent_text) != tuple(WEBCHAT_DEFAULT_COLORS.values()):
        lines.append(
            f"<style>.mc-widget{{--mc-accent:{accent};--mc-accent-text:{accent_text};"
            f"--mc-user-bg:{accent};--mc-user-text:{accent_text}}}</style>"
        )
    lines.append(
        f'<script src="{base_url}{static("webchat/widget.js")}" data-widget-key="{channel.external_id}" defer></script>'
    )
    return "\n".join(lines)


@admin.register(Channel)
class ChannelAdmin(TenantScopedAdmin):
    form = ChannelForm
    list_display = ["name", "type", "tenant", "external_id", "is_active", "sending_status"]
    list_filter = ["type", "is_active"]
    search_fields = ["name", "external_id"]
    readonly_fields = ["id", "sending_disabled_reason", "credentials_set", "created_at", "updated_at"]
    actions = ["enable_sending", "sync_templates"]
    change_form_template = "admin/channels_app/channel/change_form.html"

    def _type(self, request: HttpRequest, obj: Any) -> str:
        if obj is not None:
            return str(obj.type)
        chosen = request.POST.get("type") or request.GET.get("type") or ""
        return chosen if chosen in Channel.Type.values else ""

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        channel_type = self._type(request, obj)
        excluded = set(self.get_exclude(request, obj) or [])
        base = [f for f in ["tenant", "type", "name", "is_active"] if f not in excluded]
        fieldsets: list[Any] = [(None, {"fields": base})]
        if channel_type == Channel.Type.WEBCHAT:
            if obj is not None:
                base.append("external_id")
            fieldsets.append(("Web chat", {"fields": TYPE_FIELDS[Channel.Type.WEBCHAT]}))
        else:
            base += TYPE_FIELDS.get(channel_type, [])
            fieldsets.append(("Credentials (write-only)", {"fields": [*services.CREDENTIAL_NAMES, "credentials_set"]}))
        fieldsets.append(("Status", {"fields": ["sending_disabled_reason", "id", "created_at", "updated_at"]}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("type")  # a channel keeps its type (the API cannot change it either)
            if obj.type == Channel.Type.WEBCHAT:
                fields.append("external_id")  # the widget key, made by the platform
        return fields

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """First the type (each type has its own fields), then its form."""
        if not self._type(request, None):
            if not self.has_add_permission(request):
                raise PermissionDenied
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Add channel: choose its type",
                "types": Channel.Type.choices,
            }
            return TemplateResponse(request, "admin/channels_app/channel/choose_type.html", context)
        label = Channel.Type(self._type(request, None)).label
        return super().add_view(request, form_url, {**(extra_context or {}), "title": f"Add {label} channel"})

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra = dict(extra_context or {})
        channel = self.get_object(request, object_id)
        if channel is not None and channel.type == Channel.Type.WEBCHAT and channel.external_id:
            extra["embed_snippet"] = embed_snippet(
                channel=channel, base_url=request.build_absolute_uri("/").rstrip("/")
            )
            if (channel.config or {}).get("demo_page"):
                extra["demo_url"] = reverse("webchat-demo", args=[channel.tenant.slug])
        return super().change_view(request, object_id, form_url, extra)

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
        form.channel_type = self._type(request, obj)  # type: ignore[attr-defined]
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

    @admin.action(description="Sync WhatsApp message templates from Meta")
    def sync_templates(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for channel in queryset:
            try:
                result = templates.templates_sync(channel=channel)
            except (templates.TemplateError, SendError) as exc:
                self.message_user(request, f"{channel.name}: {exc}", level=messages.ERROR)
                continue
            counts = result.as_dict()
            self.message_user(
                request,
                f"{channel.name}: {counts['total']} template(s) ({counts['created']} new, {counts['removed']} removed).",
            )


@admin.register(MessageTemplate)
class MessageTemplateAdmin(TenantScopedAdmin):
    """Templates as Meta last reported them (synced from the channel list's action): read-only here,
    with a preview of what the contact reads; they are created and edited in WhatsApp Manager."""

    list_display = ["name", "language", "category", "status_shown", "channel", "synced_at"]
    list_filter = ["status", "category", "language"]
    search_fields = ["name"]
    fields = [
        "channel", "name", "language", "category", "status", "rejected_reason", "parameter_format",
        "variables", "preview", "components", "waba_id", "meta_id", "synced_at",
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: MessageTemplate) -> str:
        if obj.status.upper() == "APPROVED":
            return obj.status
        reason = f" ({obj.rejected_reason})" if obj.rejected_reason else ""
        return format_html('<span style="color:#b00">{}{}</span>', obj.status, reason)

    @admin.display(description="Preview")
    def preview(self, obj: MessageTemplate) -> str:
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', templates.template_preview(obj))

    @admin.display(description="Variables to fill")
    def variables(self, obj: MessageTemplate) -> str:
        return str(templates.template_variables(obj))


@admin.register(Consent)
class ConsentAdmin(TenantScopedAdmin):
    """Who may be messaged first (campaigns): imported through the API; opt-outs are recorded from the
    contact's own opt-out word and are final, so nothing here is editable."""

    list_display = ["contact_id", "channel", "source", "opted_in_at", "opted_out_at"]
    list_filter = ["source", ("opted_out_at", admin.EmptyFieldListFilter)]
    search_fields = ["=contact_id"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in Consent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Campaign)
class CampaignAdmin(TenantScopedAdmin):
    """Campaigns with their totals (sent, delivered, read, failed, skipped) and start / pause / resume;
    created through the API (docs/channels.md)."""

    list_display = ["name", "channel", "template", "status", "totals", "created_at", "finished_at"]
    list_filter = ["status"]
    actions = ["start", "pause", "resume"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*(f.name for f in Campaign._meta.fields), "totals"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    TOTALS_SHOWN = ("pending", "sent", "delivered", "read", "failed", "skipped")

    def get_queryset(self, request: HttpRequest) -> Any:
        # The totals counted in the page's own query, not one query per campaign.
        return (
            super()
            .get_queryset(request)
            .annotate(
                **{
                    f"n_{s}": models.Count("recipients", filter=models.Q(recipients__status=s))
                    for s in self.TOTALS_SHOWN
                }
            )
        )

    @admin.display(description="Totals")
    def totals(self, obj: Campaign) -> str:
        annotated = {s: getattr(obj, f"n_{s}", None) for s in self.TOTALS_SHOWN}
        counts: Mapping[str, Any] = annotated if None not in annotated.values() else campaigns.campaign_totals(obj)
        return ", ".join(f"{name} {counts[name]}" for name in self.TOTALS_SHOWN if counts[name]) or "none"

    @admin.action(description="Start (snapshot the opted-in audience and send)")
    def start(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for campaign in queryset.filter(status=Campaign.Status.DRAFT):
            campaigns.campaign_start(campaign=campaign)
        self.message_user(request, "Started.")

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for campaign in queryset:
            campaigns.campaign_pause(campaign=campaign)
        self.message_user(request, "Paused after the current batch.")

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for campaign in queryset:
            campaigns.campaign_resume(campaign=campaign)
        self.message_user(request, "Resumed.")


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
