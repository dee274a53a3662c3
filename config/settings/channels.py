"""Settings for the channels area (from the environment; see the README's variable table)."""

from config.settings.base import CELERY_BEAT_SCHEDULE

CELERY_BEAT_SCHEDULE["requeue-stale-pending-inbound"] = {
    "task": "channels_app.requeue_stale_pending",
    "schedule": 30.0,
}
