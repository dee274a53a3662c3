from __future__ import annotations

from celery import shared_task

from channels_app import inbound


@shared_task(name="channels_app.requeue_stale_pending", acks_late=True, ignore_result=True)
def requeue_stale_pending() -> int:
    return inbound.requeue_stale_pending()
