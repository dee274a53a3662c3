import time

from django.core.management.base import BaseCommand

from tenants.secrets import key_ring, rotate_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every tenant and channel secret still under an old key id with the active key "
        "(SECRET_KEY_ID). Idempotent and resumable; safe while the platform serves."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, batch_size: int, **options):
        ring = key_ring()
        started = time.monotonic()
        self.stdout.write(f"active key: {ring.active_id}; readable keys: {', '.join(sorted(ring.keys))}")

        def progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed else 0.0
            left = (total - done) / rate if rate else 0.0
            self.stdout.write(f"\r{done}/{total} re-encrypted, {rate:.0f}/s, {left:.0f}s left", ending="")

        report = rotate_secrets(batch_size=batch_size, progress=progress)
        if report.rotated:
            self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(
                f"rotated {report.rotated} secret(s) ({report.tenant_secrets} tenant, {report.channel_secrets} "
                f"channel); {report.already_current} already under '{ring.active_id}'"
            )
        )
