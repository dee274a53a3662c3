"""The admin's analytics page (Conversations → Analytics): charts and tables of conversations.analytics
for a date range, each table also as CSV.

Wired by ConversationAdmin.get_urls through ``admin_site.admin_view`` (login, staff, session checks),
and refused without the view permission on conversations. Tenant staff see their tenants only
(tenants.admin_scoping.user_tenant_ids); a superuser picks one tenant or all of them. The charts are
drawn by Chart.js served from our static files (static/vendor/chartjs).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from conversations import analytics
from conversations.analytics import DateRange
from tenants.admin_scoping import user_tenant_ids
from tenants.models import Tenant

DEFAULT_DAYS = 30
MAX_DAYS = 366
TABLES = ["messages", "conversations", "response_times", "unanswered", "documents", "usage", "sentiment", "tags"]


class RangeForm(forms.Form):
    tenant = forms.ChoiceField(required=False)
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data: Any, *, tenants: list[tuple[str, str]], allow_all: bool):
        super().__init__(data)
        choices = [("", "All tenants" if allow_all else "All my tenants")] if allow_all or len(tenants) > 1 else []
        self.fields["tenant"].choices = choices + tenants  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                raise forms.ValidationError("The end date is before the start date.")
            if (end - start).days + 1 > MAX_DAYS:
                raise forms.ValidationError(f"At most {MAX_DAYS} days at a time.")
        return data


def _params(request: HttpRequest, tenants: list[tuple[str, str]]) -> dict[str, str]:
    today = timezone.localdate()
    params = {
        "tenant": request.GET.get("tenant", "" if len(tenants) != 1 else tenants[0][0]),
        "start": request.GET.get("start", (today - dt.timedelta(days=DEFAULT_DAYS - 1)).isoformat()),
        "end": request.GET.get("end", today.isoformat()),
    }
    return params


def analytics_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    allowed = user_tenant_ids(request)
    tenants_qs = Tenant.objects.order_by("name")
    if allowed is not None:
        if not allowed:
            raise PermissionDenied
        tenants_qs = tenants_qs.filter(pk__in=allowed)
    tenants = [(str(pk), name) for pk, name in tenants_qs.values_list("pk", "name")]
    form = RangeForm(_params(request, tenants), tenants=tenants, allow_all=allowed is None)
    if "tenant" in request.GET and request.GET["tenant"] and request.GET["tenant"] not in dict(tenants):
        raise PermissionDenied  # another tenant's figures (or no such tenant)
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        "title": "Analytics",
        "opts": model_admin.model._meta,
        "form": form,
    }
    if not form.is_valid():
        return TemplateResponse(request, "admin/analytics/analytics.html", context, status=400)
    selected = form.cleaned_data["tenant"]
    tenant_ids = [selected] if selected else [pk for pk, _ in tenants]
    period = DateRange(form.cleaned_data["start"], form.cleaned_data["end"])
    export = request.GET.get("export", "")
    if export:
        if export not in TABLES:
            return HttpResponse("No such table.", status=404, content_type="text/plain")
        return _csv(export, *_table(export, tenant_ids, period), period)
    analytics.ensure_rollups(tenant_ids, period)  # once for every selector below
    days = analytics.message_days(tenant_ids, period, ensure=False)
    messages = analytics.messages_per_day(days)
    conversations = analytics.conversations_per_day(tenant_ids, period, ensure=False)
    usage = analytics.usage_per_day(days, period)
    times = analytics.response_times(tenant_ids, period, ensure=False)
    rate = analytics.handoff_rate(conversations)
    unanswered = analytics.unanswered(tenant_ids, period, ensure=False)
    documents = analytics.top_documents(tenant_ids, period, ensure=False)
    insights = analytics.insights(tenant_ids, period)
    # The tables' cells as text here: the template engine's filters (|date) cost more than the SQL.
    for row in unanswered["rows"]:
        row["url"] = reverse("admin:conversations_conversation_change", args=[row["conversation_id"]])
        row["when"] = timezone.localtime(row["at"]).strftime("%Y-%m-%d %H:%M")
    for row in [*messages, *conversations, *usage]:
        row["date"] = row["day"].isoformat()
    query = {key: form.cleaned_data[key] for key in ("start", "end")}
    query_string = f"tenant={selected}&start={query['start']}&end={query['end']}"
    context.update(
        {
            "period": period,
            "query_string": query_string,
            # Not "messages": that name is the admin's flash messages (django.contrib.messages).
            "message_rows": messages,
            "message_total": sum(r["messages"] for r in messages),
            "conversations": conversations,
            "conversation_rows": [r for r in conversations if r["new"] or r["resolved"] or r["handoffs"]],
            "usage_rows": [r for r in usage if r["prompt_tokens"] or r["completion_tokens"] or r["cost_usd"]],
            "conversation_totals": {k: sum(r[k] for r in conversations) for k in ("new", "resolved", "handoffs")},
            "usage": usage,
            "usage_totals": {k: sum(r[k] for r in usage) for k in ("prompt_tokens", "completion_tokens", "cost_usd")},
            "times": times,
            "rate": rate,
            "unanswered": unanswered,
            "documents": documents,
            "insights": insights,
            "chart_data": _chart_data(period, messages, conversations, usage, times, documents),
        }
    )
    return TemplateResponse(request, "admin/analytics/analytics.html", context)


def _chart_data(
    period: DateRange,
    messages: list[dict[str, Any]],
    conversations: list[dict[str, Any]],
    usage: list[dict[str, Any]],
    times: list[dict[str, Any]],
    documents: list[dict[str, Any]],
) -> dict[str, Any]:
    labels = [day.isoformat() for day in period.days]
    index = {day: n for n, day in enumerate(period.days)}
    by_channel: dict[str, list[int]] = {}
    for row in messages:
        by_channel.setdefault(row["channel"], [0] * len(labels))[index[row["day"]]] = row["messages"]
    return {
        "labels": labels,
        "messages": [{"label": channel, "data": data} for channel, data in by_channel.items()],
        "conversations": {key: [r[key] for r in conversations] for key in ("new", "resolved", "handoffs")},
        "tokens": {key: [r[key] for r in usage] for key in ("prompt_tokens", "completion_tokens")},
        "cost": [float(r["cost_usd"]) for r in usage],
        "times": {
            "labels": [t["measure"] for t in times],
            "p50": [t["p50"] for t in times],
            "p95": [t["p95"] for t in times],
        },
        "documents": {
            "labels": [d["title"] or d["document_id"] for d in documents],
            "data": [d["replies"] for d in documents],
        },
    }


def _table(name: str, tenant_ids: analytics.TenantIds, period: DateRange) -> tuple[list[str], Iterable[list[Any]]]:
    """A table's CSV header and rows."""
    tables: dict[str, Callable[[], tuple[list[str], Iterable[list[Any]]]]] = {
        "messages": lambda: (
            ["day", "channel", "messages"],
            ([r["day"], r["channel"], r["messages"]] for r in analytics.messages_per_day(
                analytics.message_days(tenant_ids, period))),
        ),
        "usage": lambda: (
            ["day", "prompt_tokens", "completion_tokens", "cost_usd"],
            ([r["day"], r["prompt_tokens"], r["completion_tokens"], r["cost_usd"]] for r in analytics.usage_per_day(
                analytics.message_days(tenant_ids, period), period)),
        ),
        "conversations": lambda: (
            ["day", "new", "resolved", "handoffs"],
            ([r["day"], r["new"], r["resolved"], r["handoffs"]] for r in analytics.conversations_per_day(
                tenant_ids, period)),
        ),
        "response_times": lambda: (
            ["measure", "count", "p50_seconds", "p95_seconds"],
            ([r["measure"], r["count"], r["p50"], r["p95"]] for r in analytics.response_times(tenant_ids, period)),
        ),
        "unanswered": lambda: (
            ["at", "channel", "question", "reason", "conversation_id"],
            ([r["at"].isoformat(), r["channel"], r["question"], r["reason"], r["conversation_id"]]
             for r in analytics.unanswered(tenant_ids, period)["rows"]),
        ),
        "sentiment": lambda: (
            ["sentiment", "conversations"],
            ([r["sentiment"], r["conversations"]] for r in analytics.insights(tenant_ids, period)["sentiment"]),
        ),
        "tags": lambda: (
            ["tag", "conversations"],
            ([r["tag"], r["conversations"]] for r in analytics.insights(tenant_ids, period)["tags"]),
        ),
        "documents": lambda: (
            ["document_id", "title", "citing_replies"],
            ([r["document_id"], r["title"], r["replies"]] for r in analytics.top_documents(tenant_ids, period)),
        ),
    }  # fmt: skip
    return tables[name]()


def _csv(name: str, header: list[str], rows: Iterable[list[Any]], period: DateRange) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="analytics-{name}-{period.start}-{period.end}.csv"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        # A cell a spreadsheet would run as a formula (user text: the questions) is quoted as text.
        writer.writerow(["'" + c if isinstance(c, str) and c[:1] in ("=", "+", "-", "@") else c for c in row])
    return response
