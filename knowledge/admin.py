"""Documents in the admin: upload, status and progress, re-index, delete, and "try a question".

The list and the document's page follow the indexing by themselves: static/knowledge/progress.js polls
``<document>/progress/`` (a JSON view under the admin, session auth, the user's tenants only) every
1.5 s until the document is indexed or failed. While it waits, the JSON tells its place in the queue,
estimated from the fair queue's rule (knowledge.indexing.claim_next): see ``queue_estimate``."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, Min, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from knowledge import retrieval, services
from knowledge.models import Chunk, Document
from tenants.admin_scoping import TenantScopedAdmin, user_tenant_ids
from tenants.models import Tenant


class DocumentUploadForm(forms.ModelForm):
    upload = forms.FileField(label="File", help_text="PDF, DOCX, Markdown, text or HTML.")

    class Meta:
        model = Document
        fields = ["tenant", "title"]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["title"].required = False


CHUNK_PREVIEW = 20
POLL_SECONDS = 1.5
FINAL = (Document.Status.INDEXED, Document.Status.FAILED)


def queue_estimate(document: Document) -> dict[str, Any] | None:
    """Where a pending document stands in the indexing queue, or None when it is not pending.

    An estimate, and labelled so: claim_next serves the tenant whose latest claim is oldest, which
    amounts to one document per waiting tenant in turn. So the documents ahead are the tenant's own
    queued earlier (``own_ahead``) plus, from each other waiting tenant, as many as are served before
    this one's turn: min(its waiting count, own_ahead, +1 if that tenant's turn comes first). Documents
    queued later, retries coming due and several workers change it; the page refreshes it."""
    if document.status != Document.Status.PENDING:
        return None
    now = timezone.now()
    if document.queued_at > now:
        return {"retry_at": document.queued_at.isoformat(), "estimate": False}
    own_ahead = (
        Document.objects.filter(tenant_id=document.tenant_id, status=Document.Status.PENDING, queued_at__lte=now)
        .filter(
            models.Q(queued_at__lt=document.queued_at)
            | models.Q(queued_at=document.queued_at, created_at__lt=document.created_at)
        )
        .count()
    )
    # Per tenant with documents ready: how many, its oldest wait and its latest claim, the keys
    # claim_next orders tenants by (knowledge.queries.READY_TENANTS), read through the same indexes.
    latest_claim = (
        Document.objects.filter(tenant_id=OuterRef("tenant_id"), claimed_at__isnull=False)
        .order_by("-claimed_at")
        .values("claimed_at")[:1]
    )
    rows = [
        (row["tenant_id"], row["waiting"], row["first_queued"], row["last_claim"])
        for row in Document.objects.filter(status=Document.Status.PENDING, queued_at__lte=now)
        .order_by()
        .values("tenant_id")
        .annotate(waiting=Count("pk"), first_queued=Min("queued_at"), last_claim=Subquery(latest_claim))
    ]

    def turn(last_claim: Any, first_queued: Any) -> tuple[bool, Any, Any]:
        return (last_claim is not None, last_claim or now, first_queued)

    own = next((turn(r[3], r[2]) for r in rows if r[0] == document.tenant_id), turn(None, document.queued_at))
    others = sum(
        min(waiting, own_ahead + (1 if turn(last_claim, first_queued) < own else 0))
        for tenant_id, waiting, first_queued, last_claim in rows
        if tenant_id != document.tenant_id
    )
    processing = Document.objects.filter(status=Document.Status.PROCESSING).count()
    return {
        "position": own_ahead + others + 1,
        "own_ahead": own_ahead,
        "others_ahead": others,
        "processing": processing,
        "estimate": True,
    }


def progress_payload(document: Document, *, chunks: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(document.pk),
        "status": document.status,
        "status_label": document.get_status_display(),
        "done": document.status in FINAL,
        "progress": document.progress,
        "percent": round(document.progress * 100),
        "chunks_total": document.chunks_total,
        "chunks_embedded": document.chunks_embedded,
        "error": document.error,
        "indexed_at": document.indexed_at.isoformat() if document.indexed_at else None,
        "queue": queue_estimate(document),
    }
    if chunks:
        payload["chunks"] = chunk_preview(document)
    return payload


def chunk_preview(document: Document) -> list[dict[str, Any]]:
    rows = (
        Chunk.objects.filter(tenant_id=document.tenant_id, document_id=document.pk)
        .order_by("position")
        .values("position", "page", "section", "content", "token_count")[:CHUNK_PREVIEW]
    )
    return [{**row, "content": row["content"][:800]} for row in rows]


class SearchForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    q = forms.CharField(label="Question", max_length=2000)
    k = forms.IntegerField(label="Results", min_value=1, max_value=50, required=False)


@admin.register(Document)
class DocumentAdmin(TenantScopedAdmin):
    list_display = ["title", "format", "status", "progress_display", "chunks_total", "size_bytes", "created_at"]
    list_filter = ["status", "format"]
    search_fields = ["title", "filename", "sha256"]
    actions = ["reindex_selected", "delete_selected_documents"]
    readonly_fields = [
        "filename",
        "format",
        "size_bytes",
        "sha256",
        "storage_name",
        "status",
        "error",
        "chunks_total",
        "chunks_embedded",
        "tokens_total",
        "pages",
        "embedding_model",
        "created_at",
        "keyword_ready_at",
        "indexed_at",
    ]
    change_list_template = "admin/knowledge/document/change_list.html"
    change_form_template = "admin/knowledge/document/change_form.html"

    @admin.display(description="progress")
    def progress_display(self, obj: Document) -> str:
        text = f"{obj.chunks_embedded}/{obj.chunks_total} ({obj.progress:.0%})"
        if obj.status in FINAL:
            return text
        url = reverse("admin:knowledge_document_progress", args=[obj.pk])
        return format_html('<span class="document-progress" data-progress-url="{}">{}</span>', url, text)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = DocumentUploadForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            fields = ["title", "upload"]
            return fields if self._single_tenant(request) else ["tenant", *fields]
        return ["title", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def _single_tenant(self, request: HttpRequest) -> Any:
        ids = user_tenant_ids(request)
        return ids[0] if ids is not None and len(ids) == 1 else None

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        tenant_id = self._single_tenant(request) or form.cleaned_data["tenant"].pk
        allowed = user_tenant_ids(request)
        if allowed is not None and tenant_id not in allowed:
            raise PermissionDenied
        try:
            document = services.document_upload(
                tenant=Tenant.objects.get(pk=tenant_id),
                file=form.cleaned_data["upload"],
                title=form.cleaned_data.get("title") or "",
            )
        except services.DocumentError as exc:
            messages.error(request, str(exc))
            raise PermissionDenied(str(exc)) from None
        if getattr(document, "is_duplicate", False):
            messages.warning(request, f"Identical content was already uploaded as '{document.title}'.")
        obj.pk = document.pk
        obj._state.adding = False
        obj.__dict__.update({f.attname: getattr(document, f.attname) for f in Document._meta.concrete_fields})

    def delete_model(self, request: HttpRequest, obj: Document) -> None:
        services.document_delete(document=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for document in queryset:
            services.document_delete(document=document)

    @admin.action(description="Re-index selected documents")
    def reindex_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for document in queryset:
            services.document_reindex(document=document)
        self.message_user(request, f"{queryset.count()} document(s) queued for indexing.")

    @admin.action(description="Delete selected documents (chunks and files too)")
    def delete_selected_documents(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.count()
        self.delete_queryset(request, queryset)
        self.message_user(request, f"{count} document(s) deleted.")

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # the bulk delete must go through the service
        return actions

    def get_urls(self) -> list:
        return [
            path("try/", self.admin_site.admin_view(self.try_question_view), name="knowledge_document_try"),
            path(
                "<path:object_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="knowledge_document_progress",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """The document's indexing progress as JSON (``?chunks=1`` adds the chunk preview); another
        tenant's document, or a missing one, answers 404."""
        document = self.get_object(request, object_id)
        if document is None:
            raise Http404("No such document.")
        if not self.has_view_permission(request, document):
            raise PermissionDenied
        # admin_view marks it never cached (no-store): each poll reads the database.
        return JsonResponse(progress_payload(document, chunks=request.GET.get("chunks") == "1"))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        document = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if document is not None:
            extra.update(
                progress=progress_payload(document),
                progress_url=reverse("admin:knowledge_document_progress", args=[document.pk]),
                poll_ms=int(POLL_SECONDS * 1000),
                chunks=chunk_preview(document),
                chunk_preview_size=CHUNK_PREVIEW,
            )
        return super().change_view(request, object_id, form_url, extra)

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: str | None = None) -> HttpResponse:
        """After an upload, the document's page: it shows the indexing as it goes."""
        response = super().response_add(request, obj, post_url_continue)
        if "_addanother" in request.POST or "_popup" in request.POST:
            return response
        return HttpResponseRedirect(reverse("admin:knowledge_document_change", args=[obj.pk]))

    def try_question_view(self, request: HttpRequest) -> HttpResponse:
        """Ask a question as the assistant would and see the ranked chunks with their scores."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        ids = user_tenant_ids(request)
        tenants = Tenant.objects.all() if ids is None else Tenant.objects.filter(pk__in=ids)
        form = SearchForm(request.GET or None)
        # SearchForm declares "tenant" as a ModelChoiceField.
        cast("forms.ModelChoiceField[Tenant]", form.fields["tenant"]).queryset = tenants
        if ids is not None and len(ids) == 1:
            form.fields["tenant"].initial = ids[0]
        results = None
        if form.is_bound and form.is_valid():
            results = retrieval.search(
                tenant=form.cleaned_data["tenant"], query=form.cleaned_data["q"], k=form.cleaned_data["k"]
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Try a question",
            "form": form,
            "results": results,
        }
        return TemplateResponse(request, "admin/knowledge/try_question.html", context)
