"""Store what a channel received, once, and hand it to Celery after commit.

This is the seam between the edges (webhook views, the web chat consumer) and the core: the edge
parses a payload with its adapter and calls ``record_inbound``; the turn pipeline (a Celery task
named ``HANDLE_MESSAGE_TASK``) and the status updater (``APPLY_STATUS_TASK``, which hands each update
to ``conversations.statuses``) take it from there.
A row whose task was never enqueued (broker down, crash between commit and publish) is picked up by
``requeue_stale_pending`` from beat, so nothing received is ever lost.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from channels_app import queries
from channels_app.adapters.base import NormalizedMessage, StatusUpdate
from channels_app.models import Channel, InboundEvent
from config.logs import correlation_id, get_correlation_id

logger = logging.getLogger(__name__)

HANDLE_MESSAGE_TASK = "conversations.handle_inbound_message"
APPLY_STATUS_TASK = "channels_app.apply_status_update"
# Messages that need fetching first (attachments, Messenger sender's name) go here; it stores the
# files and the name on the row, then enqueues HANDLE_MESSAGE_TASK.
PREPARE_MESSAGE_TASK = "channels_app.prepare_inbound_message"
# Carries a batch of the above from a busy web process; a worker publishes them one by one.
DISPATCH_TASK = "channels_app.dispatch_inbound"


def needs_preparation(normalized: dict) -> bool:
    """True while an attachment still has to be fetched, or a Messenger sender's name looked up
    (and no earlier attempt already gave up on it)."""
    raw = normalized.get("raw") or {}
    if raw.get("_prepared"):
        return False
    if not normalized.get("sender_name") and _looks_profiles_up(str(normalized.get("platform", ""))):
        return True
    return any((m.get("media_id") or m.get("url")) and not m.get("storage_path") for m in normalized.get("media") or [])


def _looks_profiles_up(platform: str) -> bool:
    """Whether the platform's webhooks carry no sender name, which its adapter looks up (Messenger)."""
    from channels_app.adapters import ADAPTERS
    from channels_app.adapters.base import ProfileAdapter

    return isinstance(ADAPTERS.get(platform), ProfileAdapter)


def json_depth_exceeds(value: Any, *, body: bytes, limit: int) -> bool:
    """True if the parsed ``value`` nests lists/objects more than ``limit`` deep (the top level is 1).

    What is stored is serialised again (``record_inbound``), deeper in the call stack than where it was
    parsed: a payload just under the parser's recursion limit would fail there instead, as a 500.
    ``body`` gives a cheap way out: a body with at most ``limit`` brackets cannot nest deeper (an
    everyday Meta payload has a dozen or two), so only larger ones are walked.
    """
    if body.count(b"{") + body.count(b"[") <= limit or not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def status_dedupe_key(update: StatusUpdate) -> str:
    return f"{update.message_id or 'watermark'}:{update.status}:{update.watermark or ''}"


def record_inbound(
    *, channel: Channel, messages: Iterable[NormalizedMessage] = (), statuses: Iterable[StatusUpdate] = ()
) -> list[int]:
    """Insert each item once (ON CONFLICT DO NOTHING); return the ids of the rows that were new.

    Runs inside the caller's transaction (the new rows are enqueued after it commits) or in
    autocommit mode (the single INSERT is atomic; the rows are enqueued right after it).
    """
    cid = get_correlation_id() or ""
    rows = [(InboundEvent.Kind.MESSAGE, m.message_id, m.sender_id, _message_dict(m)) for m in messages] + [
        (InboundEvent.Kind.STATUS, status_dedupe_key(s), s.recipient_id, dict(vars(s))) for s in statuses
    ]
    if not rows:
        return []
    params: list[UUID | str] = []
    for kind, key, sender, normalized in rows:
        params += [channel.tenant_id, channel.pk, kind, key, sender, json.dumps(normalized), cid]
    with_media = {key for kind, key, _s, normalized in rows if kind == "message" and needs_preparation(normalized)}
    with connection.cursor() as cursor:
        cursor.execute(queries.inbound_insert(len(rows)), params)
        created = [(row_id, kind, key in with_media) for row_id, kind, key in cursor.fetchall()]
    if created:
        transaction.on_commit(lambda: enqueue_soon(created), robust=True)
    return [row[0] for row in created]


def _message_dict(message: NormalizedMessage) -> dict[str, Any]:
    """``message.to_dict()`` without dataclasses.asdict's deep copy of ``raw`` (hot path; the
    result is serialized at once, never mutated)."""
    data = dict(vars(message))
    data["media"] = [dict(vars(m)) for m in message.media]
    return data


def _task_for(kind: str, needs_media: bool) -> str:
    if kind != InboundEvent.Kind.MESSAGE:
        return APPLY_STATUS_TASK
    return PREPARE_MESSAGE_TASK if needs_media else HANDLE_MESSAGE_TASK


def enqueue(rows: Iterable[tuple]) -> None:
    """Publish one task per inbound row: ``(id, kind)`` or ``(id, kind, needs_media)``.

    A failure is logged; the beat sweep retries the row later."""
    from config.celery import app

    for inbound_id, kind, *rest in rows:
        _publish(app, _task_for(kind, bool(rest and rest[0])), inbound_id, None)


def enqueue_message_later(inbound_id: int, seconds: float) -> None:
    """Publish a message event's task to run in ``seconds`` (a burst still being written). A failure is
    logged; the beat sweep retries the row later."""
    from config.celery import app

    _publish(app, HANDLE_MESSAGE_TASK, inbound_id, None, countdown=seconds)


def _publish(app: Any, task: str, inbound_id: int, producer: Any, *, countdown: float | None = None) -> None:
    try:
        app.send_task(task, args=[inbound_id], producer=producer, countdown=countdown)
    except Exception as exc:
        logger.error(
            "could not enqueue inbound event; the pending sweep will retry it",
            extra={"inbound_id": inbound_id, "error": str(exc)},
        )


def enqueue_soon(rows: Iterable[tuple]) -> None:
    """Like ``enqueue``, but from a background thread when CHANNELS_ASYNC_ENQUEUE is on, so that a
    webhook's acknowledgement never waits on the broker. A row whose publish is lost with the process
    is still pending in the database, and the sweep enqueues it."""
    if not settings.CHANNELS_ASYNC_ENQUEUE:
        enqueue(rows)
        return
    cid = get_correlation_id()
    _publisher.submit([(_task_for(kind, bool(rest and rest[0])), inbound_id, cid) for inbound_id, kind, *rest in rows])


COALESCE_SECONDS = 0.025
# The publisher waits COALESCE_SECONDS for more only when the arrival rate of the last second fills that
# window with this many tasks (160/s): below it the wait would delay every message (a turn's reply) and
# save little. What arrived during a publish goes in the next one whatever the rate.
COALESCE_MIN_EXPECTED = 4
RATE_WINDOW_SECONDS = 1.0
# A batch up to this size is published from here, pipelined (one Redis round trip); a larger one as one
# task that a worker fans out (the web process pays for one publish instead of hundreds).
DIRECT_MAX = 4
MAX_BATCH = 500


class _Publisher:
    """One daemon thread per process publishing queued tasks with one pooled producer per batch."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[tuple[str, int, str | None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, items: list[tuple[str, int, str | None]]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="inbound-publisher", daemon=True)
                self._thread.start()
            self._pending += len(items)
        self._queue.put(items)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is published (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _run(self) -> None:
        from config.celery import app

        rate = 0.0  # tasks per second over the last full window
        window_started, window_items = time.monotonic(), 0
        while True:
            batch = self._queue.get()
            now = time.monotonic()
            if now - window_started >= RATE_WINDOW_SECONDS:
                rate = window_items / (now - window_started)
                window_started, window_items = now, 0
            # Under heavy load, whatever arrives within COALESCE_SECONDS (25 ms) goes in one publish: a
            # Celery publish costs ~0.5 ms of CPU whatever it carries, a web process's scarcest resource.
            wait = COALESCE_SECONDS if rate * COALESCE_SECONDS >= COALESCE_MIN_EXPECTED else 0.0
            deadline = now + wait
            try:
                while len(batch) < MAX_BATCH:
                    remaining = deadline - time.monotonic()
                    batch += self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                pass
            window_items += len(batch)
            try:
                with app.producer_or_acquire() as producer:
                    if len(batch) <= DIRECT_MAX:
                        _publish_batch(app, producer, batch)
                    else:
                        app.send_task(DISPATCH_TASK, args=[[list(item) for item in batch]], producer=producer)
            except Exception as exc:  # the broker pool itself failed: the sweep catches these rows
                logger.error("inbound publisher failed", extra={"count": len(batch), "error": str(exc)})
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()


def _publish_batch(app: Any, producer: Any, items: Iterable[Sequence[Any]]) -> int:
    """Publish ``[task, inbound id, correlation id]`` items, each with its correlation id, in one Redis
    round trip (kombu's pipelined publish batch: half the CPU of publishing one by one). A failed flush
    raises."""
    count = 0
    with producer.batch(max_size=MAX_BATCH):
        for task, inbound_id, cid in items:
            token = correlation_id.set(cid)
            try:
                _publish(app, task, inbound_id, producer)
            finally:
                correlation_id.reset(token)
            count += 1
    return count


_publisher = _Publisher()
atexit.register(_publisher.flush)


def dispatch(items: Iterable[list]) -> int:
    """Fan a batch of ``[task, inbound id, correlation id]`` out into one task each (in a worker). A
    failed flush raises: the task is retried, and the sweep is behind it."""
    from config.celery import app

    with app.producer_or_acquire() as producer:
        return _publish_batch(app, producer, items)


def requeue_stale_pending(*, older_than: timedelta | None = None, limit: int = 1000) -> int:
    """Re-enqueue pending rows that have waited too long (their task was lost). Idempotent by design:
    the handlers skip rows that are no longer pending."""
    if older_than is None:
        older_than = timedelta(seconds=settings.INBOUND_REQUEUE_AFTER_SECONDS)
    cutoff = timezone.now() - older_than
    stale = [
        (row_id, kind, kind == InboundEvent.Kind.MESSAGE and needs_preparation(normalized), cid)
        for row_id, kind, normalized, cid in InboundEvent.objects.filter(
            status=InboundEvent.Status.PENDING, received_at__lt=cutoff
        )
        .order_by("id")
        .values_list("id", "kind", "normalized", "correlation_id")[:limit]
    ]
    if stale:
        logger.warning("re-enqueueing stale pending inbound events", extra={"count": len(stale)})
    for row_id, kind, needs_media, cid in stale:
        token = correlation_id.set(cid or correlation_id.get())  # the task goes on with its message's id
        try:
            enqueue([(row_id, kind, needs_media)])
        finally:
            correlation_id.reset(token)
    return len(stale)
