"""The agent inbox: conversations waiting for a human first, the transcript with sources and tool
calls, reply as the agent (sent through the channel), resolve, return to the bot. Tenant functions.

Tenant staff see only their tenants' rows (TenantScopedAdmin); every action calls
conversations.services.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from channels_app.models import Channel
from channels_app.services.window import OutsideWindow
from conversations import analytics_admin, experiments, selectors, services
from conversations.inbox import services as inbox_services
from conversations.models import CannedReply, Conversation, Experiment, Message, SatisfactionRating, TenantFunction
from conversations.state import InvalidTransition
from conversations.tools import FunctionDefinitionError, validate_definition
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import Tenant
from tenants.settings_schema import TenantSettingsError

STATE_COLOURS: dict[str, str] = {
    Conversation.State.HANDOFF_REQUESTED: "#b91c1c",
    Conversation.State.AGENT: "#b45309",
    Conversation.State.BOT: "#15803d",
    Conversation.State.RESOLVED: "#6b7280",
}


class ChannelFilter(admin.SimpleListFilter):
    """Channel choices limited to the user's tenants (the default filter would list every tenant's)."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        channels = Channel.objects.all()
        tenant_ids = user_tenant_ids(request)
        if tenant_ids is not None:
            channels = channels.filter(tenant_id__in=tenant_ids)
        return [(str(c.pk), str(c)) for c in channels.order_by("name")[:200]]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        return queryset.filter(channel_id=self.value()) if self.value() else queryset


class ReplyForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=4096)


@admin.register(Conversation)
class ConversationAdmin(TenantScopedAdmin):
    list_display = [
        "contact_name",
        "state_badge",
        "channel",
        "handoff_reason",
        "sentiment",
        "tag_list",
        "last_activity_at",
        "cost_usd",
    ]
    list_filter = ["state", ChannelFilter, "sentiment", ("last_activity_at", admin.DateFieldListFilter)]
    search_fields = ["contact__profile_name", "contact__external_id"]
    list_select_related = ["contact", "channel"]
    date_hierarchy = "last_activity_at"

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        # Waiting for a human first, then with an agent, then the rest; newest activity first in each.
        return (
            super()
            .get_queryset(request)
            .annotate(state_priority=selectors.STATE_PRIORITY)
            .order_by("state_priority", "-last_activity_at")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.display(description="Tags")
    def tag_list(self, obj: Conversation) -> str:
        return ", ".join(obj.tags)

    @admin.display(description="contact", ordering="contact__profile_name")
    def contact_name(self, obj: Conversation) -> str:
        return str(obj.contact)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: Conversation) -> str:
        return format_html(
            '<strong style="color:{}">{}</strong>', STATE_COLOURS.get(obj.state, "#000"), obj.get_state_display()
        )

    def get_urls(self) -> list:
        info = self.model._meta.app_label, self.model._meta.model_name
        wrap = self.admin_site.admin_view
        return [
            path("analytics/", wrap(self.analytics_view), name="{}_{}_analytics".format(*info)),
            path("<uuid:object_id>/reply/", wrap(self.reply_view), name="{}_{}_reply".format(*info)),
            path("<uuid:object_id>/resolve/", wrap(self.resolve_view), name="{}_{}_resolve".format(*info)),
            path("<uuid:object_id>/return-to-bot/", wrap(self.return_view), name="{}_{}_return".format(*info)),
            *super().get_urls(),
        ]

    def analytics_view(self, request: HttpRequest) -> HttpResponse:
        return analytics_admin.analytics_view(self, request)

    def _conversation(self, request: HttpRequest, object_id: str, *, change: bool) -> Conversation:
        conversation = self.get_queryset(request).select_related("contact", "channel").filter(pk=object_id).first()
        if conversation is None:
            raise Http404("No such conversation.")
        allowed = (
            self.has_change_permission(request, conversation)
            if change
            else self.has_view_permission(request, conversation)
        )
        if not allowed:
            raise PermissionDenied
        return conversation

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        conversation = self._conversation(request, object_id, change=False)
        tenant = Tenant.objects.get(pk=conversation.tenant_id)
        transcript = list(selectors.transcript(tenant=tenant, conversation=conversation).select_related("agent_user"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Conversation with {conversation.contact}",
            "opts": self.model._meta,
            "conversation": conversation,
            "transcript": transcript,
            "boundary": conversation.context_start_message_id,
            "reply_form": ReplyForm(),
            "can_change": self.has_change_permission(request, conversation),
            "tool_sender": Message.Sender.TOOL,
        }
        return TemplateResponse(request, "admin/conversations/conversation/inbox_detail.html", context)

    def _back(self, conversation: Conversation) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:conversations_conversation_change", args=[conversation.pk]))

    def reply_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            raise Http404
        conversation = self._conversation(request, object_id, change=True)
        form = ReplyForm(request.POST)
        if not form.is_valid():
            messages.error(request, "The reply is empty or too long.")
            return self._back(conversation)
        tenant = Tenant.objects.get(pk=conversation.tenant_id)
        # As from the live inbox: an unassigned conversation is assigned to the agent who answers it.
        try:
            message = inbox_services.reply(
                tenant=tenant, conversation=conversation, text=form.cleaned_data["text"], user=request.user
            )
        except OutsideWindow as exc:  # nothing was stored or sent
            messages.error(request, f"Not sent: {exc}. Send an approved template from the inbox instead.")
            return self._back(conversation)
        if message.status == Message.Status.FAILED:
            messages.error(request, f"Stored but not delivered: {message.error.get('message', '')}")
        else:
            messages.success(request, "Reply sent.")
        return self._back(conversation)

    def _transition(self, request: HttpRequest, object_id: str, operation: Any, done: str) -> HttpResponse:
        if request.method != "POST":
            raise Http404
        conversation = self._conversation(request, object_id, change=True)
        tenant = Tenant.objects.get(pk=conversation.tenant_id)
        try:
            operation(tenant=tenant, conversation=conversation, actor=f"agent:{request.user.get_username()}")
        except InvalidTransition as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, done)
        return self._back(conversation)

    def resolve_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # As from the live inbox: the closing message and the satisfaction question follow.
        def resolve(*, tenant: Tenant, conversation: Conversation, actor: str) -> Conversation:
            return inbox_services.resolve(tenant=tenant, conversation=conversation, user=request.user)

        return self._transition(request, object_id, resolve, "Conversation resolved.")

    def return_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._transition(
            request, object_id, services.conversation_return_to_bot, "The bot answers this conversation again."
        )


class TenantFunctionForm(forms.ModelForm):
    class Meta:
        model = TenantFunction
        fields = [
            "tenant",
            "name",
            "description",
            "parameters",
            "endpoint_url",
            "timeout_seconds",
            "auth_header_name",
            "auth_secret_name",
            "is_active",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            validate_definition(
                name=data.get("name") or self.instance.name,
                parameters=data.get("parameters") if data.get("parameters") is not None else {},
                endpoint_url=data.get("endpoint_url") or "",
                timeout_seconds=data.get("timeout_seconds") or 0,
            )
        except FunctionDefinitionError as exc:
            for field, problems in exc.errors.items():
                self.add_error(field if field in self.fields else None, problems)
        return data


@admin.register(TenantFunction)
class TenantFunctionAdmin(TenantScopedAdmin):
    form = TenantFunctionForm
    list_display = ["name", "tenant", "endpoint_url", "timeout_seconds", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["name", "tenant"] if obj else []

    def save_model(self, request: HttpRequest, obj: TenantFunction, form: Any, change: bool) -> None:
        tenant_ids = user_tenant_ids(request)
        tenant = obj.tenant if obj.tenant_id else Tenant.objects.get(pk=tenant_ids[0])  # type: ignore[index]
        if tenant_ids is not None and tenant.pk not in tenant_ids:
            raise PermissionDenied
        fields = {f: form.cleaned_data[f] for f in form.cleaned_data if f not in {"tenant", "name"}}
        if change:
            services.function_update(tenant=tenant, function=obj, **fields)
            return
        created = services.function_create(tenant=tenant, name=form.cleaned_data["name"], **fields)
        obj.pk, obj._state.adding = created.function.pk, False
        messages.warning(
            request,
            f"Signing secret for {obj.name} (copy it now, it is not shown again): {created.signing_secret}",
        )

    def delete_model(self, request: HttpRequest, obj: TenantFunction) -> None:
        services.function_delete(tenant=Tenant.objects.get(pk=obj.tenant_id), function=obj)


@admin.register(CannedReply)
class CannedReplyAdmin(TenantScopedAdmin):
    """A tenant's saved answers; agents insert one in the inbox's composer by typing ``/shortcut``."""

    list_display = ["shortcut", "text", "updated_at"]
    search_fields = ["shortcut", "text"]


@admin.register(SatisfactionRating)
class SatisfactionRatingAdmin(TenantScopedAdmin):
    """The end users' 1-5 answers to the closing message (read only)."""

    list_display = ["conversation", "score", "agent", "created_at"]
    list_filter = ["score"]
    list_select_related = ["conversation", "agent"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ExperimentForm(forms.ModelForm):
    """Variants as JSON: ``[{"name": "control", "share": 50, "overrides": {}}, {"name": "warm", "share": 50,
    "overrides": {"tone": "warm"}}]``, validated like the API's (shares sum to 100, overrides by the schema)."""

    default_tenant_id: Any = None

    class Meta:
        model = Experiment
        fields = ["tenant", "name", "goal", "variants"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        tenant = data.get("tenant") or (self.instance.tenant if self.instance.tenant_id else None)
        if tenant is None and self.default_tenant_id is not None:
            tenant = Tenant.objects.get(pk=self.default_tenant_id)
        if tenant is not None and "variants" in data:
            try:
                data["variants"] = experiments.validate_variants(tenant=tenant, variants=data["variants"])
            except experiments.ExperimentError as exc:
                self.add_error("variants", [f"{path}: {', '.join(problems)}" for path, problems in exc.errors.items()])
        return data


@admin.register(Experiment)
class ExperimentAdmin(TenantScopedAdmin):
    """A/B tests of the assistant: define (a draft), start, stop, and promote the winner into the tenant
    settings; the change page shows the results per variant."""

    form = ExperimentForm
    list_display = ["name", "goal", "status", "started_at", "stopped_at", "promoted_variant"]
    list_filter = ["status", "goal"]
    actions = ["start_experiments", "stop_experiments", "promote_winners"]
    FIXED = ["status", "started_at", "stopped_at", "promoted_variant", "results"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.status != Experiment.Status.DRAFT:
            return ["tenant", "name", "goal", "variants", *self.FIXED]
        return ["tenant", *self.FIXED] if obj is not None else self.FIXED

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        tenant_ids = user_tenant_ids(request)
        form.default_tenant_id = tenant_ids[0] if tenant_ids else None  # type: ignore[attr-defined]
        return form

    def save_model(self, request: HttpRequest, obj: Experiment, form: Any, change: bool) -> None:
        tenant_ids = user_tenant_ids(request)
        if not obj.tenant_id:
            obj.tenant_id = tenant_ids[0]  # type: ignore[index]
        if tenant_ids is not None and obj.tenant_id not in tenant_ids:
            raise PermissionDenied
        obj.save()

    @admin.display(description="Results")
    def results(self, obj: Experiment) -> str:
        if obj.pk is None or obj.started_at is None:
            return "Not started."
        found = experiments.experiment_results(tenant=Tenant.objects.get(pk=obj.tenant_id), experiment=obj)

        def number(value: float | None) -> str:
            return "–" if value is None else f"{value:.4g}"

        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}%</td><td>{}</td><td>{}</td><td>{} [{}, {}]</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r["name"] + (" (control)" if r["control"] else ""), r["share"], r["conversations"],
                    r["observations"], number(r["value"]), number(r["ci_low"]), number(r["ci_high"]),
                    number(r["p_value"]), "better" if r["better"] else ("significant" if r["significant"] else "–"),
                )
                for r in found["variants"]
            ),
        )  # fmt: skip
        return format_html(
            "<table><tr><th>Variant</th><th>Share</th><th>Conversations</th><th>Observations</th>"
            "<th>{} (95% CI)</th><th>p vs control</th><th>Result</th></tr>{}</table><p>Winner: <strong>{}</strong></p>",
            obj.get_goal_display(),
            rows,
            found["winner"] or "none yet (no significant difference)",
        )

    def _each(self, request: HttpRequest, queryset: models.QuerySet, operation: Any, done: str) -> None:
        for experiment in queryset:
            try:
                operation(tenant=Tenant.objects.get(pk=experiment.tenant_id), experiment=experiment)
            except (experiments.ExperimentConflict, TenantSettingsError) as exc:
                messages.error(request, f"{experiment}: {exc}")
            else:
                messages.success(request, f"{experiment}: {done}")

    @admin.action(description="Start the selected experiments")
    def start_experiments(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._each(request, queryset, experiments.experiment_start, "started.")

    @admin.action(description="Stop the selected experiments")
    def stop_experiments(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._each(request, queryset, experiments.experiment_stop, "stopped.")

    @admin.action(description="Promote the winner into the tenant settings (and stop)")
    def promote_winners(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._each(request, queryset, experiments.experiment_promote, "winner promoted into the tenant settings.")
