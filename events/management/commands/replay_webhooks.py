"""manage.py replay_webhooks TENANT [--endpoint UUID] [--delivery ID ...] [--since ISO] [--dry-run]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from events import services
from events.models import WebhookDelivery, WebhookEndpoint
from tenants.management.commands._lookup import find_tenant


class Command(BaseCommand):
    help = "Replay dead webhook deliveries of a tenant (all, one endpoint's, or given ids) on a fresh schedule."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="tenant id or slug")
        parser.add_argument("--endpoint", help="only this webhook endpoint (id)")
        parser.add_argument("--delivery", type=int, action="append", help="only this delivery id (repeatable)")
        parser.add_argument("--since", help="only deliveries created at or after this ISO 8601 time")
        parser.add_argument("--dry-run", action="store_true", help="count, do not replay")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = find_tenant(options["tenant"])
        endpoint = None
        if options["endpoint"]:
            endpoint = WebhookEndpoint.objects.for_tenant(tenant).filter(pk=options["endpoint"]).first()
            if endpoint is None:
                raise CommandError(f"tenant {tenant.slug} has no webhook endpoint {options['endpoint']}")
        since = None
        if options["since"]:
            since = parse_datetime(options["since"])
            if since is None:
                raise CommandError("--since must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z")
        if options["dry_run"]:
            queryset = WebhookDelivery.objects.for_tenant(tenant).filter(status="dead", endpoint__is_active=True)
            if endpoint is not None:
                queryset = queryset.filter(endpoint=endpoint)
            if options["delivery"]:
                queryset = queryset.filter(pk__in=options["delivery"])
            if since is not None:
                queryset = queryset.filter(created_at__gte=since)
            self.stdout.write(f"{queryset.count()} dead deliveries would be replayed")
            return
        try:
            count = services.webhook_deliveries_replay(
                tenant=tenant, endpoint=endpoint, delivery_ids=options["delivery"], since=since
            )
        except services.WebhookError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"{count} dead deliveries replayed"))
