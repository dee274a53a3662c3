"""Settings for the channels area (from the environment; see docs/channels.md)."""

import os

from config.settings.base import CELERY_BEAT_SCHEDULE, CELERY_TASK_ROUTES, env_bool, env_float, env_int

# Safety net for an inbound row whose task was lost or stalled: re-enqueued once it has been pending
# this long (seconds), checked every 10 s. Handlers skip rows that are no longer pending.
INBOUND_REQUEUE_AFTER_SECONDS = env_int("INBOUND_REQUEUE_AFTER_SECONDS", 30)
CELERY_BEAT_SCHEDULE["requeue-stale-pending-inbound"] = {
    "task": "channels_app.requeue_stale_pending",
    "schedule": 10.0,
}
CELERY_TASK_ROUTES.update(
    {
        "channels_app.apply_status_update": {"queue": "default"},
        "channels_app.prepare_inbound_message": {"queue": "default"},
        "channels_app.dispatch_inbound": {"queue": "default"},
        "channels_app.run_campaign": {"queue": "default"},
        "channels_app.resume_stalled_campaigns": {"queue": "default"},
    }
)

# Meta Graph API (WhatsApp Cloud API, Messenger Send API): tests and proxies point the base elsewhere.
GRAPH_API_BASE_URL = os.environ.get("GRAPH_API_BASE_URL", "https://graph.facebook.com")
GRAPH_API_VERSION = os.environ.get("GRAPH_API_VERSION", "v25.0")
GRAPH_API_TIMEOUT = env_float("GRAPH_API_TIMEOUT", 10.0)
# Attempts per call on throttling (130429, 131056, 613, 4) and 5xx, with exponential backoff + jitter.
GRAPH_API_MAX_ATTEMPTS = env_int("GRAPH_API_MAX_ATTEMPTS", 4)
GRAPH_API_BACKOFF_BASE = env_float("GRAPH_API_BACKOFF_BASE", 0.5)
GRAPH_API_BACKOFF_MAX = env_float("GRAPH_API_BACKOFF_MAX", 8.0)

# Webhooks: Meta sends up to 3 MB; bigger bodies answer 413 before anything is parsed.
WEBHOOK_MAX_BODY_BYTES = env_int("WEBHOOK_MAX_BODY_BYTES", 5 * 1024 * 1024)
# Messenger's legacy X-Hub-Signature (HMAC-SHA1), accepted only when no SHA-256 header is present.
MESSENGER_ACCEPT_SHA1_SIGNATURE = env_bool("MESSENGER_ACCEPT_SHA1_SIGNATURE", True)
# WhatsApp mark-as-read also shows "typing..." (disappears on reply or after 25 s).
WHATSAPP_TYPING_INDICATOR = env_bool("WHATSAPP_TYPING_INDICATOR", True)
# Seconds a channel lookup (routing + signature key) is reused in-process by the webhook views.
WEBHOOK_CHANNEL_CACHE_SECONDS = env_float("WEBHOOK_CHANNEL_CACHE_SECONDS", 5.0)
# How long a Messenger user's profile name is reused before it is looked up again (seconds).
MESSENGER_PROFILE_CACHE_SECONDS = env_int("MESSENGER_PROFILE_CACHE_SECONDS", 86400)
# Inbound media larger than this is not downloaded (WhatsApp allows 100 MB).
CHANNEL_MEDIA_MAX_BYTES = env_int("CHANNEL_MEDIA_MAX_BYTES", 100 * 1024 * 1024)
# A file an agent or integrator sends (POST .../conversations/<id>/media/): WhatsApp's largest kind
# (documents); each platform's own limit is checked too. The request body may be this big plus the
# multipart overhead (config.ingress).
CHANNEL_MEDIA_SEND_MAX_BYTES = env_int("CHANNEL_MEDIA_SEND_MAX_BYTES", 100 * 1024 * 1024)
# Campaigns: Meta's default throughput per phone number (80 messages/s, up to 1,000 when upgraded) and
# a daily limit of business-initiated messages (the number's messaging tier); words that opt a contact
# out when sent as a whole message (a channel's config.opt_out_words replaces them).
CAMPAIGN_RATE_PER_SECOND = env_float("CAMPAIGN_RATE_PER_SECOND", 80.0)
CAMPAIGN_MAX_RATE_PER_SECOND = env_float("CAMPAIGN_MAX_RATE_PER_SECOND", 1000.0)
CAMPAIGN_DAILY_LIMIT = env_int("CAMPAIGN_DAILY_LIMIT", 1000)
# Graph calls a campaign runner makes at once (one at a time, a runner is bound by the API's latency).
CAMPAIGN_SEND_THREADS = env_int("CAMPAIGN_SEND_THREADS", 8)
# A running campaign with nothing claimed for this long lost its runner (a killed worker): beat resumes it.
CAMPAIGN_STALL_SECONDS = env_float("CAMPAIGN_STALL_SECONDS", 120.0)
CELERY_BEAT_SCHEDULE["resume-stalled-campaigns"] = {"task": "channels_app.resume_stalled_campaigns", "schedule": 15.0}
CAMPAIGN_OPT_OUT_WORDS = [
    w for w in os.environ.get("CAMPAIGN_OPT_OUT_WORDS", "STOP,UNSUBSCRIBE,STOPALL").split(",") if w
]
# Voice notes: an OpenAI-compatible transcription endpoint (base URL, e.g. https://api.openai.com/v1;
# POST <url>/audio/transcriptions). Empty: voice notes are not transcribed (channels_app.transcription).
VOICE_TRANSCRIPTION_URL = os.environ.get("VOICE_TRANSCRIPTION_URL", "")
VOICE_TRANSCRIPTION_API_KEY = os.environ.get("VOICE_TRANSCRIPTION_API_KEY", "")
VOICE_TRANSCRIPTION_MODEL = os.environ.get("VOICE_TRANSCRIPTION_MODEL", "whisper-1")
VOICE_TRANSCRIPTION_TIMEOUT = env_float("VOICE_TRANSCRIPTION_TIMEOUT", 30.0)
# bench/webhook_ingest.py only: POST /webhooks/_bench/bare answers 200 at once (channels_app.webhook_asgi).
WEBHOOK_BENCH_BARE_ENDPOINT = env_bool("WEBHOOK_BENCH_BARE_ENDPOINT", False)
# Publish inbound tasks from a background thread so webhook acknowledgements never wait on the broker
# (a publish lost with a crashing process is re-enqueued by the pending sweep).
CHANNELS_ASYNC_ENQUEUE = env_bool("CHANNELS_ASYNC_ENQUEUE", True)

# Meta's payloads are about 8 levels deep; a body nested deeper than this answers 400 before it is
# routed (a 50,000-deep body would otherwise exhaust the parser's recursion).
WEBHOOK_MAX_JSON_DEPTH = env_int("WEBHOOK_MAX_JSON_DEPTH", 64)

# Unrouted webhooks (no channel for their ids; unverifiable, so anyone can send them) are kept for a
# superuser to inspect, within bounds (docs/channels.md "Abuse limits"):
# the first bytes of a body are stored, with its size and SHA-256; the rest is not.
UNROUTED_WEBHOOK_MAX_STORED_BYTES = env_int("UNROUTED_WEBHOOK_MAX_STORED_BYTES", 64 * 1024)
# Kept per minute from one source address, and from all sources together; above either, the payload
# is answered as usual but only counted (metric unrouted_webhooks_dropped_total) and logged.
UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE = env_int("UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE", 30)
UNROUTED_WEBHOOKS_PER_MINUTE = env_int("UNROUTED_WEBHOOKS_PER_MINUTE", 300)
# Days a kept unrouted webhook stays; beat purges older ones hourly (manage.py purge_unrouted_webhooks).
UNROUTED_WEBHOOK_RETENTION_DAYS = env_int("UNROUTED_WEBHOOK_RETENTION_DAYS", 7)
CELERY_BEAT_SCHEDULE["purge-unrouted-webhooks"] = {
    "task": "channels_app.purge_unrouted_webhooks",
    "schedule": 3600.0,
}
CELERY_TASK_ROUTES["channels_app.purge_unrouted_webhooks"] = {"queue": "default"}
