import time

from django.core.management.base import BaseCommand

from tenants.secrets import key_ring, rotate_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret (tenant and channel: each registered repository) still under an old key id "
        "with the active key (SECRET_KEY_ID). Idempotent and resumable; safe while the platform serves."
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
        by_kind = ", ".join(f"{count} {kind}" for kind, count in report.rotated_by_kind.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"rotated {report.rotated} secret(s) ({by_kind}); {report.already_current} already under "
                f"'{ring.active_id}'"
            )
        )
