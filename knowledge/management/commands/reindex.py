"""manage.py reindex [--tenant ID|SLUG] [--document ID] [--failed-only] [--keyword-only]."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge import services
from knowledge.models import Document
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Queue documents for re-indexing (all, one tenant's, or one document)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="tenant id or slug")
        parser.add_argument("--document", help="document id")
        parser.add_argument("--failed-only", action="store_true", help="only documents in status failed")
        parser.add_argument(
            "--keyword-only",
            action="store_true",
            help="rebuild only the keyword (BM25) index of --tenant, now, from the stored chunks "
            "(after a change of locale or of KNOWLEDGE_TITLE_WEIGHT); no re-embedding",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        documents = Document.objects.all()
        tenant: Tenant | None = None
        if options["tenant"]:
            value = options["tenant"]
            tenant = Tenant.objects.filter(slug=value).first()
            if tenant is None:
                try:
                    tenant = Tenant.objects.filter(pk=value).first()
                except Exception:
                    tenant = None
            if tenant is None:
                raise CommandError(f"no tenant with id or slug '{value}'")
            documents = documents.for_tenant(tenant)
        if options["keyword_only"]:
            if tenant is None:  # set (or CommandError above) whenever --tenant was given
                raise CommandError("--keyword-only needs --tenant")
            from knowledge.lexical import rebuild_postings

            count = rebuild_postings(tenant=tenant)
            self.stdout.write(self.style.SUCCESS(f"keyword index rebuilt for {count} document(s)"))
            return
        if options["document"]:
            documents = documents.filter(pk=options["document"])
        if options["failed_only"]:
            documents = documents.filter(status=Document.Status.FAILED)
        total = documents.count()
        for done, document in enumerate(documents.order_by("tenant_id", "created_at").iterator(), start=1):
            services.document_reindex(document=document)
            if done % 100 == 0 or done == total:
                self.stdout.write(f"queued {done}/{total}")
        self.stdout.write(self.style.SUCCESS(f"{total} document(s) queued for indexing"))
