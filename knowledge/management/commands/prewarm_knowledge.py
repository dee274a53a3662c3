"""manage.py prewarm_knowledge [--mode read|prefetch|buffer] [--max-mb N]."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.prewarm import MODES, PrewarmUnavailable, prewarm


class Command(BaseCommand):
    help = (
        "Read the knowledge search's working set (chunks, posting indexes, vector indexes, statistics) "
        "into memory with pg_prewarm: after a reboot or a failover, before traffic."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--mode",
            choices=MODES,
            default="read",
            help="read: into the OS page cache, waiting (default); prefetch: ask the OS and return; "
            "buffer: into PostgreSQL's shared buffers",
        )
        parser.add_argument(
            "--max-mb", type=int, default=None, help="read at most this many MB (most used relations first)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        budget = options["max_mb"]
        if budget is not None and budget < 0:
            raise CommandError("--max-mb must be 0 or more")
        try:
            done, skipped = prewarm(mode=options["mode"], max_bytes=None if budget is None else budget * 2**20)
        except PrewarmUnavailable as exc:
            raise CommandError(str(exc)) from None
        for read in done:
            self.stdout.write(
                f"{read.relation}: {read.bytes / 2**20:.0f} MB, {read.blocks} blocks in {read.seconds:.1f} s"
            )
        for name, size in skipped:
            self.stdout.write(f"{name}: {size / 2**20:.0f} MB, left out (over --max-mb)")
        total = sum(r.bytes for r in done)
        seconds = sum(r.seconds for r in done)
        self.stdout.write(
            self.style.SUCCESS(
                f"read {len(done)} relations, {total / 2**20:.0f} MB, in {seconds:.1f} s ({options['mode']})"
            )
        )
