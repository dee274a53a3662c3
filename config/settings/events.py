"""Settings for the events area (from the environment; see docs/events.md).

Events leave the platform from the ``Event`` outbox in two ways: signed tenant webhooks (Celery queue
``webhooks``, run by its own threads-pool worker so a slow receiver never delays message processing)
and, when ``RABBITMQ_URL`` is set (base settings), a durable topic exchange.
"""

import os

from config.settings.base import CELERY_BEAT_SCHEDULE, CELERY_TASK_ROUTES, env_float, env_int

# --- RabbitMQ publishing --------------------------------------------------------------------------
EVENTS_EXCHANGE = os.environ.get("EVENTS_EXCHANGE", "metachat.events")
# Events published per confirmed batch (one transaction marks them published).
EVENTS_PUBLISH_BATCH = env_int("EVENTS_PUBLISH_BATCH", 500)
EVENTS_PUBLISH_CONNECT_TIMEOUT_SECONDS = env_float("EVENTS_PUBLISH_CONNECT_TIMEOUT_SECONDS", 3.0)
# /api/health reports the outbox degraded when an event has waited this long to be published.
EVENTS_OUTBOX_LAG_WARNING_SECONDS = env_int("EVENTS_OUTBOX_LAG_WARNING_SECONDS", 60)

# --- Tenant webhooks ------------------------------------------------------------------------------
# A 2xx within this many seconds is a success; anything else is a failed attempt.
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)
# Delays (seconds) before retry 1, 2, ...; after the last one fails the delivery is dead (~20.6 h).
WEBHOOK_RETRY_SCHEDULE = [
    int(s) for s in os.environ.get("WEBHOOK_RETRY_SCHEDULE", "5,60,300,1800,7200,21600,43200").split(",") if s.strip()
]
# Each delay is randomised by up to ± this fraction so retries of many deliveries do not stampede.
WEBHOOK_RETRY_JITTER = env_float("WEBHOOK_RETRY_JITTER", 0.1)
# An endpoint whose every attempt has failed for this long is disabled (and the tenant told).
WEBHOOK_DISABLE_AFTER_HOURS = env_float("WEBHOOK_DISABLE_AFTER_HOURS", 24.0)
# CA bundle that receivers' HTTPS certificates must chain to (PEM file); empty: certifi's public roots.
WEBHOOK_CA_BUNDLE = os.environ.get("WEBHOOK_CA_BUNDLE", "")
# Deliveries one drain task claims and sends over one kept-alive connection before recording them.
WEBHOOK_CLAIM_BATCH = env_int("WEBHOOK_CLAIM_BATCH", 20)
# Drains of one endpoint that may run at once (worker threads it may hold); 1 while it is failing.
WEBHOOK_ENDPOINT_CONCURRENCY = env_int("WEBHOOK_ENDPOINT_CONCURRENCY", 4)
# After a rotation, the previous signing secret also signs requests for this long.
WEBHOOK_SECRET_ROTATION_GRACE_HOURS = env_float("WEBHOOK_SECRET_ROTATION_GRACE_HOURS", 24.0)
WEBHOOK_RESPONSE_EXCERPT_CHARS = env_int("WEBHOOK_RESPONSE_EXCERPT_CHARS", 500)

CELERY_TASK_ROUTES.update(
    {
        "events.deliver_endpoint": {"queue": "webhooks"},
        "events.dispatch_events": {"queue": "webhooks"},
        "events.publish_events": {"queue": "webhooks"},
        "events.sweep_outbox": {"queue": "webhooks"},
    }
)
CELERY_BEAT_SCHEDULE["events-sweep-outbox"] = {"task": "events.sweep_outbox", "schedule": 5.0}
