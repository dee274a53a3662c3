"""Documents in the admin: upload, status and progress, re-index, delete, and "try a question"."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from knowledge import retrieval, services
from knowledge.models import Document
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

    @admin.display(description="progress")
    def progress_display(self, obj: Document) -> str:
        return f"{obj.chunks_embedded}/{obj.chunks_total} ({obj.progress:.0%})"

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
            *super().get_urls(),
        ]

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
