from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from channels_app import unrouted


class Command(BaseCommand):
    help = (
        "Delete unrouted webhooks (payloads no channel took) older than the retention period "
        "(UNROUTED_WEBHOOK_RETENTION_DAYS; beat runs this hourly). Prints progress and the total."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=float,
            default=None,
            help=f"keep this many days instead of UNROUTED_WEBHOOK_RETENTION_DAYS ({settings.UNROUTED_WEBHOOK_RETENTION_DAYS})",
        )

    def handle(self, *args, days: float | None, **options):
        if days is not None and days < 0:
            raise CommandError("--days must be 0 or more")
        keep_days = settings.UNROUTED_WEBHOOK_RETENTION_DAYS if days is None else days

        def progress(done: int) -> None:
            self.stdout.write(f"  deleted {done} so far", ending="\r")
            self.stdout.flush()

        deleted = unrouted.purge(older_than=timedelta(days=keep_days), progress=progress)
        self.stdout.write(f"Deleted {deleted} unrouted webhook(s) older than {keep_days:g} day(s).")
