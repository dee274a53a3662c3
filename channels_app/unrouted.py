"""Webhooks no channel took: kept for a superuser to inspect, within bounds anyone on the internet can't move.

They are unverifiable (no channel, so no app secret), so each bound holds whoever sends them:
- size: the first UNROUTED_WEBHOOK_MAX_STORED_BYTES of the body are stored, with the size and SHA-256
  of the whole body (enough to tell two payloads apart or match one against Meta's logs);
- rate: UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE per source address and UNROUTED_WEBHOOKS_PER_MINUTE
  in all (tenants.ratelimit, one round trip a payload); above either, nothing is stored and each drop is
  counted (``unrouted_webhooks_dropped_total{platform, limit}``); the first drop of a window is also
  logged, with the source (a log line per drop would hand the flood on to the logs);
- time: rows older than UNROUTED_WEBHOOK_RETENTION_DAYS are deleted by ``purge`` (beat, hourly, and
  ``manage.py purge_unrouted_webhooks``).
The sender's answer does not change with any of this (200 ``unrouted``): Meta retries anything else.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from channels_app.models import UnroutedWebhook
from config import metrics
from tenants import ratelimit

logger = logging.getLogger(__name__)

SAFE_HEADERS = ("content-type", "content-length", "user-agent", "x-hub-signature-256", "x-hub-signature")
PURGE_BATCH = 5000


def keep(
    *,
    platform: str,
    reason: str,
    external_ids: list[str],
    body: bytes,
    headers: Mapping[str, str],
    source: str = "",
) -> bool:
    """Store an excerpt of the payload unless its source or everyone is over the rate cap; True if stored."""
    refused_by, verdict = _over_rate_cap(source or "unknown")
    if refused_by:
        metrics.incr("unrouted_webhooks_dropped_total", platform=platform, limit=refused_by)
        if verdict.count == verdict.limit + 1:
            logger.warning(
                "unrouted webhooks dropped until the rate cap's window ends; counted in "
                "unrouted_webhooks_dropped_total",
                extra={
                    "platform": platform,
                    "limit": refused_by,
                    "per_minute": verdict.limit,
                    "source": source,
                    "window_ends_in": verdict.retry_after,
                },
            )
        return False
    cap = int(settings.UNROUTED_WEBHOOK_MAX_STORED_BYTES)
    UnroutedWebhook.objects.create(
        platform=platform,
        reason=reason[:200],
        external_ids=[str(ext)[:128] for ext in external_ids[:100]],
        body=body[:cap].decode("utf-8", errors="replace"),
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_truncated=len(body) > cap,
        headers={k: headers[k][:500] for k in SAFE_HEADERS if headers.get(k)},
    )
    metrics.incr("unrouted_webhooks_kept_total", platform=platform)
    logger.warning(
        "unrouted webhook kept for inspection",
        extra={"platform": platform, "reason": reason, "external_ids": external_ids[:20], "bytes": len(body)},
    )
    return True


def _over_rate_cap(source: str) -> tuple[str, ratelimit.Verdict]:
    """The cap this payload is over ("address" or "global", or "" if it may be stored), with its count."""
    per_address = ratelimit.hit_pipelined(
        group="webhooks.unrouted.address", key=source, limit=int(settings.UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE)
    )
    if not per_address.allowed:
        return "address", per_address
    overall = ratelimit.hit_pipelined(
        group="webhooks.unrouted", key="all", limit=int(settings.UNROUTED_WEBHOOKS_PER_MINUTE)
    )
    return ("" if overall.allowed else "global"), overall


def purge(*, older_than: timedelta | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Delete unrouted webhooks received before ``older_than`` ago (default: the retention period), in
    batches so no long lock is held; ``progress`` gets the running total. Returns how many went."""
    if older_than is None:
        older_than = timedelta(days=int(settings.UNROUTED_WEBHOOK_RETENTION_DAYS))
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        ids = list(
            UnroutedWebhook.objects.filter(received_at__lt=cutoff)
            .order_by("received_at")
            .values_list("id", flat=True)[:PURGE_BATCH]
        )
        if not ids:
            break
        deleted += UnroutedWebhook.objects.filter(id__in=ids).delete()[0]
        if progress is not None:
            progress(deleted)
    if deleted:
        metrics.incr("unrouted_webhooks_purged_total", amount=deleted)
        logger.info("unrouted webhooks purged", extra={"deleted": deleted, "before": cutoff.isoformat()})
    return deleted
